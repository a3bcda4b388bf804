"""A web form: one hosted page per organization and campaign, embeddable on any site.

The slug is the form's public address (`/f/<slug>`) and its only identifier on
the outside: random, so one organization's forms cannot be found from
another's. Nothing on a form is secret; everything here may be rendered.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import models

from leads.models import Organization

CONTACT_FIELDS = ("phone", "email")
FIELDS = ("name", "phone", "email", "message")

DEFAULT_CONSENT_LABEL = "Yes, you may contact me about my enquiry on WhatsApp or by SMS."
DEFAULT_THANK_YOU = "Our message is on its way: look out for it on WhatsApp or by SMS in a moment."


def new_slug() -> str:
    """16 URL-safe characters, 96 random bits: not guessable, not enumerable."""
    return secrets.token_urlsafe(12)


def _validate_source(value: str) -> None:
    from leads.serializers import LeadSerializer  # the API's own rule for a source, so both agree

    try:
        normalized = LeadSerializer().validate_source(value)
    except Exception as exc:  # noqa: BLE001 - DRF's ValidationError; re-raised as Django's
        raise ValidationError(f"{value!r} is not a valid source: {' '.join(getattr(exc, 'detail', [str(exc)]))}") from None
    if normalized != value:
        raise ValidationError(f"Write the source in lower case without spaces, e.g. {normalized!r}.")


def parse_origins(value: str) -> list[str]:
    """One origin per line (or separated by spaces/commas), as `scheme://host[:port]`."""
    return [part.strip().rstrip("/") for part in value.replace(",", " ").split() if part.strip()]


def _validate_origins(value: str) -> None:
    for origin in parse_origins(value):
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
            raise ValidationError(f"{origin!r} is not an origin; write it as https://www.example.com (scheme and host, no path).")
        if parts.username or parts.password:
            raise ValidationError(f"{origin!r} must not carry a user or password.")


class FieldUse(models.TextChoices):
    HIDDEN = "hidden", "Not shown"
    OPTIONAL = "optional", "Shown, optional"
    REQUIRED = "required", "Shown, required"


class WebForm(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="web_forms")
    slug = models.CharField(
        max_length=32, unique=True, default=new_slug, editable=False,
        help_text="The form's public address, /f/<slug>. Random, so it cannot be guessed.",
    )
    title = models.CharField(max_length=120, help_text="The page's heading, e.g. “Book a viewing”.")
    intro = models.TextField(blank=True, default="", help_text="A sentence or two under the heading (plain text).")
    campaign = models.CharField(
        max_length=128, blank=True, default="",
        help_text="Stored on every lead from this form. Empty: the page address's utm_campaign, if any.",
    )
    source = models.CharField(max_length=64, default="webform", validators=[_validate_source],
                              help_text="Stored on every lead from this form (routing rules can match it).")
    name_field = models.CharField("name", max_length=8, choices=FieldUse.choices, default=FieldUse.REQUIRED)
    phone_field = models.CharField("phone", max_length=8, choices=FieldUse.choices, default=FieldUse.REQUIRED)
    email_field = models.CharField("e-mail", max_length=8, choices=FieldUse.choices, default=FieldUse.OPTIONAL)
    message_field = models.CharField("message", max_length=8, choices=FieldUse.choices, default=FieldUse.OPTIONAL)
    consent_label = models.CharField(
        max_length=300, default=DEFAULT_CONSENT_LABEL,
        help_text="The opt-in checkbox's label. It is never ticked in advance; unticked, the lead gets no WhatsApp or SMS.",
    )
    thank_you_text = models.TextField(default=DEFAULT_THANK_YOU, help_text="Shown after a successful submission (plain text).")
    allowed_origins = models.TextField(
        blank=True, default="", validators=[_validate_origins],
        help_text="Sites that may embed this form, one per line, e.g. https://www.example.com. Empty: any site may.",
    )
    is_active = models.BooleanField("active", default=True, help_text="An inactive form's page answers “not found”.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "web form"
        ordering = ("title", "pk")
        indexes = [models.Index(fields=["organization", "title"], name="webform_org_title_idx")]

    def __str__(self) -> str:
        return self.title

    def clean(self) -> None:
        super().clean()
        shown = [name for name in CONTACT_FIELDS if self.use(name) != FieldUse.HIDDEN]
        if not shown:
            raise ValidationError({"phone_field": "Show phone or e-mail (or both): a lead needs one of them to be answered."})
        if len(shown) == 1 and self.use(shown[0]) != FieldUse.REQUIRED:
            raise ValidationError({f"{shown[0]}_field": f"The {shown[0]} is the only contact field shown, so it must be required."})

    def use(self, field: str) -> str:
        return getattr(self, f"{field}_field")

    def shows(self, field: str) -> bool:
        return self.use(field) != FieldUse.HIDDEN

    def requires(self, field: str) -> bool:
        return self.use(field) == FieldUse.REQUIRED

    @property
    def origins(self) -> list[str]:
        return parse_origins(self.allowed_origins)

    @property
    def path(self) -> str:
        return f"/f/{self.slug}"
