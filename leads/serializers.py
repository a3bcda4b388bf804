"""Input validation and normalization for lead submissions.

Strict on types (a JSON number is not a phone, "yes" is not a boolean),
lenient on extra fields (forms send UTM tags and more; they are kept in the
submission's raw payload). Every error names its field.
"""

from __future__ import annotations

import re

import phonenumbers
from rest_framework import serializers

from leads.models import SOURCE_RE
from leads.services import LeadInput
from swiftex.api import unstorable

MAX_METADATA_KEYS = 100


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of coercing them."""

    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictEmailField(serializers.EmailField):
    default_error_messages = {"invalid": "Enter a valid email address."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class LeadSerializer(serializers.Serializer):
    name = StrictCharField(max_length=200, required=False, allow_blank=True, allow_null=True, default="")
    phone = StrictCharField(max_length=40, required=False, allow_blank=True, allow_null=True)
    email = StrictEmailField(max_length=254, required=False, allow_blank=True, allow_null=True)
    source = StrictCharField(max_length=64, required=False, default="api")
    campaign = StrictCharField(max_length=128, required=False, allow_blank=True, allow_null=True, default="")
    external_id = StrictCharField(max_length=128, required=False, allow_blank=True, allow_null=True)
    message = StrictCharField(max_length=5000, required=False, allow_blank=True, allow_null=True, default="", trim_whitespace=False)
    consent = StrictBooleanField(required=False, default=False)
    metadata = serializers.DictField(required=False, default=dict)

    def validate_email(self, value):
        if not value:
            return None
        value = value.strip().lower()
        if len(value) > 254:  # lower-casing can lengthen it: "İ" is two characters in lower case
            raise serializers.ValidationError("Ensure this field has no more than 254 characters.")
        return value

    def validate_phone(self, value):
        if not value:
            return None
        region = self.context.get("phone_region") or "US"
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            number = None
        if number is None or not phonenumbers.is_valid_number(number):
            raise serializers.ValidationError(
                f"{value!r} is not a valid phone number; use international format such as +14155550123."
            )
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    def validate_source(self, value):
        value = value.strip().lower()
        if not SOURCE_RE.match(value):
            raise serializers.ValidationError("Use 1-64 characters: letters, digits, and _ . : -")
        return value

    def validate_metadata(self, value):
        if len(value) > MAX_METADATA_KEYS:
            raise serializers.ValidationError(f"At most {MAX_METADATA_KEYS} keys.")
        return value

    def validate(self, attrs):
        # The whole submission is kept as its raw payload (jsonb), unknown fields included.
        if found := unstorable(self.initial_data):
            where, what = found
            raise serializers.ValidationError({re.split(r"[.\[]", where, maxsplit=1)[0]: [f"{where}: {what}."]})
        if not attrs.get("phone") and not attrs.get("email"):
            raise serializers.ValidationError({"phone": ["Either phone or email is required."], "email": ["Either phone or email is required."]})
        if pinned := self.context.get("pinned_source"):
            if "source" in self.initial_data and attrs["source"] != pinned:
                raise serializers.ValidationError(
                    {"source": [f"This API key is pinned to source {pinned!r}; leave source out or send {pinned!r}."]}
                )
            attrs["source"] = pinned
        return attrs

    def to_lead_input(self) -> LeadInput:
        data = self.validated_data
        return LeadInput(
            source=data["source"],
            name=" ".join((data.get("name") or "").split()),  # a name is one line: it goes into e-mail subjects
            phone=data.get("phone"),
            email=data.get("email"),
            campaign=(data.get("campaign") or "").strip(),
            external_id=(data.get("external_id") or "").strip() or None,
            message=data.get("message") or "",
            consent=data["consent"],
            metadata=data["metadata"],
        )
