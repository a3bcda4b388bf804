"""Tenants, the people who submit forms, their leads, every submission, and the timeline.

Deduplication lives in these constraints, not in application checks: a
Contact is unique per organization by E.164 phone and by lower-cased email,
a Contact has at most one open Lead (partial unique index), and a Submission's
`external_id` is unique per organization and source.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
import string
import zoneinfo
from urllib.parse import urlsplit

import phonenumbers
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower

API_KEY_PREFIX = "swx_"
SOURCE_RE = re.compile(r"^[a-z0-9][a-z0-9_.:\-]{0,63}$")


def parse_keywords(value: str) -> frozenset[str]:
    return frozenset(word.strip().lower() for word in value.split(",") if word.strip())


def _validate_keywords(value: str) -> None:
    if not parse_keywords(value):
        raise ValidationError("List at least one keyword, e.g. stop, unsubscribe.")


def _validate_business_days(value: str) -> None:
    days = [day.strip() for day in value.split(",") if day.strip()]
    if not days or any(day not in {"1", "2", "3", "4", "5", "6", "7"} for day in days):
        raise ValidationError("Comma-separated ISO weekdays from 1 (Monday) to 7 (Sunday), e.g. 1,2,3,4,5.")


def _validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone such as Europe/Lisbon")


# Public names for other apps' fields (the private ones are referenced by migrations).
validate_timezone = _validate_timezone
validate_weekdays = _validate_business_days


GREETING_PLACEHOLDERS = ("first_name", "name", "organization", "campaign", "source")
DEFAULT_AI_PROMPT = (
    "You write the first WhatsApp message to a sales lead who just filled in a form. "
    "One or two short, warm sentences in the lead's language; greet them by first name, "
    "mention what they asked about if known, and say a specialist will follow up. "
    "No links, no emojis, no promises about prices."
)
DEFAULT_GREETING_FALLBACK = "Hi {first_name}, thanks for contacting {organization}! A specialist will be in touch with you shortly."
DEFAULT_REPLY_PROMPT = (
    "You are a friendly sales assistant for {organization} chatting with a lead on WhatsApp or SMS. "
    "Answer their latest messages in one to three short sentences, in their language. "
    "Ask at most one question. Never invent prices, dates or promises; say a specialist will confirm details."
)
DEFAULT_REPLY_FALLBACK = "Thanks, {first_name}! A specialist from {organization} will get back to you shortly."
DEFAULT_OPT_OUT_KEYWORDS = "stop, stopall, unsubscribe, cancel, end, quit, revoke, optout, parar, pare, baja, alto"
DEFAULT_OPT_OUT_CONFIRMATION = "You will not receive any more messages from {organization}."


MAX_INACTIVITY_HOURS = 24 * 365 * 10  # ten years; far more overflows the date arithmetic


def _validate_phone_region(value: str) -> None:
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise ValidationError(f"{value!r} is not a country code phone numbers can be read for; use two capital letters, e.g. US, BR, GB.")


def _https_or_loopback(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" or parts.hostname in ("127.0.0.1", "localhost", "::1")


def _validate_property_name(value: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,99}", value):
        raise ValidationError("A HubSpot internal property name: lower-case letters, digits and underscores, starting with a letter.")


def validate_text_template(value: str) -> None:
    try:
        fields = [(field, conversion, spec) for _, field, spec, conversion in string.Formatter().parse(value) if field is not None]
    except ValueError as exc:
        raise ValidationError(f"Not a valid template: {exc}. Write literal braces as {{{{ and }}}}.") from None
    # Only bare {name}: a format spec such as {first_name:>2000000000} would make every
    # message cost gigabytes in the worker that renders it.
    styled = sorted({"{%s%s%s}" % (field, f"!{conversion}" if conversion else "", f":{spec}" if spec else "")
                     for field, conversion, spec in fields if conversion or spec})
    if styled:
        raise ValidationError(f"Write placeholders as plain {{name}}, without formatting: {', '.join(styled)}.")
    names = {field for field, _, _ in fields}
    unknown = sorted(names - set(GREETING_PLACEHOLDERS))
    if unknown:
        raise ValidationError(
            f"Unknown placeholder(s) {', '.join('{%s}' % n for n in unknown)}; use {', '.join('{%s}' % n for n in GREETING_PLACEHOLDERS)}."
        )


class Organization(models.Model):
    name = models.CharField(max_length=200)
    timezone = models.CharField(max_length=64, default="UTC", validators=[_validate_timezone])
    phone_region = models.CharField(
        max_length=2, default="US", validators=[_validate_phone_region],
        help_text="ISO country code used to read phone numbers written without a +country prefix.",
    )
    ingest_rate_per_minute = models.PositiveIntegerField(
        default=6000, validators=[MinValueValidator(1)],
        help_text="Leads per minute this organization may submit; bursts of up to 10 seconds' worth are allowed.",
    )
    # Provider credentials. `organization_create()` starts them from the
    # environment's defaults; admins edit them per organization. Never rendered
    # back in pages or API responses.
    whatsapp_phone_number_id = models.CharField(max_length=64, blank=True, default="", db_index=True)  # routes webhooks
    whatsapp_access_token = models.TextField(blank=True, default="")
    whatsapp_app_secret = models.CharField(max_length=128, blank=True, default="")
    whatsapp_verify_token = models.CharField(max_length=128, blank=True, default="")
    twilio_account_sid = models.CharField(max_length=64, blank=True, default="", db_index=True)
    twilio_auth_token = models.CharField(max_length=128, blank=True, default="")
    twilio_from_number = models.CharField(max_length=32, blank=True, default="")
    hubspot_access_token = models.TextField(blank=True, default="")
    # The first touch (conversations app). The AI writes the greeting within
    # the latency budget; otherwise `greeting_fallback` is used, so a lead is
    # greeted in time even when the model is slow, down or not configured.
    ai_model = models.CharField(max_length=100, default="gpt-4o-mini", help_text="Model name on the OpenAI-compatible server.")
    ai_prompt = models.TextField(
        default=DEFAULT_AI_PROMPT,
        help_text="System prompt for the greeting. The lead's name, source, campaign and message follow it.",
    )
    greeting_fallback = models.TextField(
        default=DEFAULT_GREETING_FALLBACK,
        validators=[validate_text_template],
        help_text="Used when the model is slow, fails or no API key is set. Placeholders: "
        + ", ".join("{%s}" % name for name in GREETING_PLACEHOLDERS) + ".",
    )
    whatsapp_template_name = models.CharField(
        max_length=200, blank=True, default="lead_greeting",
        help_text="Approved WhatsApp template for business-initiated messages (outside the 24-hour window). "
        "Empty: no WhatsApp outside the window (SMS is used).",
    )
    whatsapp_template_language = models.CharField(max_length=16, default="en_US")
    whatsapp_template_has_parameter = models.BooleanField(
        default=True, help_text="The template's body has one {{1}} parameter, filled with the greeting text."
    )
    # Conversations after the greeting (conversations/replies.py, followups.py).
    reply_prompt = models.TextField(
        default=DEFAULT_REPLY_PROMPT,
        help_text="System prompt for replies to the lead's messages; the conversation so far follows it. "
        "{organization} is replaced with the organization's name.",
    )
    reply_fallback = models.TextField(
        default=DEFAULT_REPLY_FALLBACK, validators=[validate_text_template],
        help_text="Reply used when the model is slow, fails or no API key is set. Same placeholders as the greeting fallback.",
    )
    reply_debounce_seconds = models.FloatField(
        default=3.0, validators=[MinValueValidator(0.5), MaxValueValidator(60)],
        help_text="Quiet time after the lead's last message before one reply answers them all.",
    )
    reply_debounce_max_seconds = models.FloatField(
        default=15.0, validators=[MinValueValidator(1), MaxValueValidator(300)],
        help_text="A lead who keeps typing is answered at the latest this long after their first unanswered message.",
    )
    opt_out_keywords = models.TextField(
        default=DEFAULT_OPT_OUT_KEYWORDS, validators=[_validate_keywords],
        help_text="Comma-separated. A message that is exactly one of these (any case) opts the contact out of every channel.",
    )
    opt_out_confirmation = models.TextField(
        default=DEFAULT_OPT_OUT_CONFIRMATION, validators=[validate_text_template],
        help_text="Sent once when a contact opts out; nothing is sent to them after it.",
    )
    quiet_hours_enabled = models.BooleanField(
        default=True, help_text="Follow-ups wait for business hours. Greetings and replies to the lead always go at once.",
    )
    business_hours_start = models.TimeField(default=datetime.time(9, 0), help_text="In the organization's time zone.")
    business_hours_end = models.TimeField(default=datetime.time(18, 0))
    business_days = models.CharField(
        max_length=20, default="1,2,3,4,5", validators=[_validate_business_days],
        help_text="ISO weekdays follow-ups may go out on: 1 = Monday … 7 = Sunday, comma-separated.",
    )
    inactivity_timeout_hours = models.PositiveIntegerField(
        default=168, validators=[MaxValueValidator(MAX_INACTIVITY_HOURS)],
        help_text="An open lead with no message either way for this long is closed as lost (pending follow-ups cancelled). 0 turns it off.",
    )
    # CRM sync (crmsync/). Contacts and their latest lead go to the CRM in batches,
    # under the account's request rate.
    crm_adapter = models.CharField(
        max_length=16, blank=True, default="", choices=[("", "Off"), ("hubspot", "HubSpot"), ("webhook", "Signed webhook")],
        help_text="Where contacts are synced. Off: nothing is queued.",
    )
    crm_requests_per_second = models.FloatField(
        default=10.0, validators=[MinValueValidator(0.1), MaxValueValidator(100)],
        help_text="Requests a second to the CRM account, shared by every worker on every machine.",
    )
    hubspot_phone_property = models.CharField(
        max_length=100, default="swiftex_phone", validators=[_validate_property_name],
        help_text="A unique HubSpot contact property holding the E.164 phone: the id for contacts without email.",
    )
    crm_webhook_url = models.URLField(
        max_length=500, blank=True, default="",
        help_text="Signed-webhook adapter: batches of contacts are POSTed here as JSON.",
    )
    crm_webhook_secret = models.CharField(
        max_length=128, blank=True, default="",
        help_text="Signs each webhook: X-Swiftex-Signature = sha256= HMAC-SHA256(secret, timestamp + '.' + body).",
    )
    # Lead routing (routing/): who answers a new lead, and when it moves on.
    fallback_owner = models.ForeignKey(
        "routing.Rep", on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="Gets the leads no routing rule matches, and those whose team has nobody available.",
    )
    escalation_minutes = models.PositiveIntegerField(
        default=0, validators=[MaxValueValidator(7 * 24 * 60)],
        help_text="A lead whose rep has neither replied nor changed its status this long after assignment "
        "moves to the next available teammate. 0 turns it off.",
    )
    reps_see_only_own_leads = models.BooleanField(
        default=False, help_text="Reps see only the leads assigned to them; managers always see every lead.",
    )
    first_response_target_seconds = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1), MaxValueValidator(7 * 24 * 3600)],
        help_text="Speed-to-lead target: a lead not answered within this many seconds of capture is an SLA breach "
        "on the analytics dashboard.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        if self.business_hours_start is not None and self.business_hours_end is not None and self.business_hours_start >= self.business_hours_end:
            raise ValidationError({"business_hours_end": "Business hours must end after they start (same day)."})
        if self.reply_debounce_max_seconds is not None and self.reply_debounce_seconds is not None \
                and self.reply_debounce_max_seconds < self.reply_debounce_seconds:
            raise ValidationError({"reply_debounce_max_seconds": "The maximum wait cannot be shorter than the quiet window."})
        if self.crm_adapter == "hubspot" and not self.hubspot_access_token:
            raise ValidationError({"crm_adapter": "HubSpot sync needs the HubSpot access token (under Provider credentials)."})
        if self.crm_adapter == "webhook" and not (self.crm_webhook_url and self.crm_webhook_secret):
            raise ValidationError({"crm_adapter": "The signed webhook needs its URL and secret."})
        if self.fallback_owner_id and self.pk and self.fallback_owner.organization_id != self.pk:
            raise ValidationError({"fallback_owner": "The fallback owner must be a rep of this organization."})
        if self.crm_webhook_url and not _https_or_loopback(self.crm_webhook_url):
            raise ValidationError({"crm_webhook_url": "Use https: contacts' names, emails and phones travel in it."})

    def opt_out_words(self) -> frozenset[str]:
        return parse_keywords(self.opt_out_keywords)

    def business_weekdays(self) -> frozenset[int]:
        return frozenset(int(day) for day in self.business_days.split(",") if day.strip())


def validate_source(value: str) -> None:
    if not SOURCE_RE.match(value):
        raise ValidationError("Use 1-64 characters: lower-case letters, digits, and _ . : -")


class ApiKey(models.Model):
    """An API key, stored as its SHA-256 only. Keys are 256-bit random, so a
    fast hash is enough: there is nothing to brute-force.

    A partner's key pins its `source`: every lead sent with it is recorded under
    that source whatever the body says, so a partner cannot pass its leads off as
    another's, and its `external_id`s (unique per source) cannot collide with
    anyone else's."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, default="default")
    source = models.CharField(
        max_length=64, blank=True, default="", validators=[validate_source],
        help_text="For a partner or aggregator: every lead sent with this key gets this source (a body naming "
        "another source is refused). Empty: the body's source is used (default 'api').",
    )
    prefix = models.CharField(max_length=12, help_text="First characters of the key, to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    @staticmethod
    def hash(raw_key: str) -> str:
        return hashlib.sha256(raw_key.encode()).hexdigest()

    @classmethod
    def issue(cls, organization: Organization, name: str = "default", source: str = "") -> tuple[ApiKey, str]:
        """Create a key; the raw value is returned once and never stored."""
        raw = API_KEY_PREFIX + secrets.token_urlsafe(32)
        api_key = cls.objects.create(organization=organization, name=name, source=source, prefix=raw[:10], key_hash=cls.hash(raw))
        return api_key, raw


class Contact(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="contacts")
    name = models.CharField(max_length=200, blank=True, default="")
    phone = models.CharField(max_length=20, null=True, blank=True, help_text="E.164, e.g. +14155550123")
    email = models.CharField(max_length=254, null=True, blank=True, help_text="Stored lower-cased.")
    consent = models.BooleanField(default=False, help_text="Opted in to WhatsApp/SMS messages.")
    consent_at = models.DateTimeField(null=True, blank=True)
    consent_revoked_at = models.DateTimeField(
        null=True, blank=True,
        help_text="The contact's last opt-out word (STOP). Only an opt-in given after it restores consent: a live "
                  "submission does, an imported list or a Meta lead created before it does not.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "phone"], condition=Q(phone__isnull=False), name="contact_phone_per_org"),
            models.UniqueConstraint(fields=["organization", "email"], condition=Q(email__isnull=False), name="contact_email_per_org"),
            models.CheckConstraint(condition=Q(phone__isnull=False) | Q(email__isnull=False), name="contact_has_phone_or_email"),
            models.CheckConstraint(condition=Q(email__isnull=True) | Q(email=Lower("email")), name="contact_email_lowercase"),
        ]

    def __str__(self) -> str:
        return self.name or self.phone or self.email or f"contact {self.pk}"


class Lead(models.Model):
    class Status(models.TextChoices):
        NEW = "new", "New"
        CONTACTED = "contacted", "Contacted"
        ENGAGED = "engaged", "Engaged"
        QUALIFIED = "qualified", "Qualified"
        WON = "won", "Won"
        LOST = "lost", "Lost"

    OPEN_STATUSES = (Status.NEW, Status.CONTACTED, Status.ENGAGED, Status.QUALIFIED)

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="leads", db_index=False)  # lead_org_* indexes
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="leads")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW)
    source = models.CharField(max_length=64)
    campaign = models.CharField(max_length=128, blank=True, default="")
    routing = models.JSONField(default=dict, blank=True, help_text="Routing metadata from the first submission.")
    captured_at = models.DateTimeField()
    first_response_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    imported = models.BooleanField(
        default=False,
        help_text="Opened by a CSV import: a list, not a hot lead. Not greeted unless the import asked for it, not "
        "routed, and left out of speed-to-lead analytics. A live submission from the same person makes it a hot lead.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["contact"], condition=Q(status__in=["new", "contacted", "engaged", "qualified"]), name="one_open_lead_per_contact"
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "-captured_at"], name="lead_org_captured_idx"),
            # The admin's source and campaign filters: their choices by a skip scan, their rows by the value.
            models.Index(fields=["organization", "source"], name="lead_org_source_idx"),
            models.Index(fields=["organization", "campaign"], name="lead_org_campaign_idx"),
        ]

    def __str__(self) -> str:
        return f"lead {self.pk} ({self.status})"


class Submission(models.Model):
    """Every inbound submission, raw payload included: nothing a form sent is dropped."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="submissions")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="submissions")
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="submissions")
    source = models.CharField(max_length=64)
    campaign = models.CharField(max_length=128, blank=True, default="")
    external_id = models.CharField(max_length=128, null=True, blank=True)
    message = models.TextField(blank=True, default="")
    payload = models.JSONField(help_text="The submission exactly as received.")
    received_at = models.DateTimeField()
    opened_lead = models.BooleanField(default=False, help_text="This submission opened its lead.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "source", "external_id"], condition=Q(external_id__isnull=False), name="submission_external_id_per_source"
            ),
        ]

    def __str__(self) -> str:
        return f"submission {self.pk} from {self.source}"


class LeadEvent(models.Model):
    """The lead's timeline: one row per thing that happened, in order."""

    # Nine or so rows a lead: lead_event_timeline_idx serves lookups by lead, no second index.
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="events", db_index=False)
    kind = models.CharField(max_length=64)
    data = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["lead", "occurred_at"], name="lead_event_timeline_idx")]
        ordering = ["occurred_at", "pk"]

    def __str__(self) -> str:
        return f"{self.kind} at {self.occurred_at:%Y-%m-%d %H:%M:%S}"


class IdempotencyKey(models.Model):
    """A client's `Idempotency-Key` and the response it got, replayed on retry.

    The row is inserted in the same transaction as the lead, so a concurrent
    retry blocks on the unique key and then replays the committed response.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField(null=True)
    response_body = models.JSONField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "key"], name="idempotency_key_per_org")]
        indexes = [models.Index(fields=["created_at"], name="idempotency_key_age_idx")]
