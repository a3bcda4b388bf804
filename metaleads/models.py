"""Meta Lead Ads: connected pages, their lead forms (with the field mapping), and each leadgen id received.

A `MetaLeadgen` row is the durable record of one Meta lead: the webhook (or the
reconciliation) inserts it once per `leadgen_id` before answering, and the row
then moves `pending` → `ingested` (with its lead) or `failed` (with the reason a
human can read in admin). See docs/meta-lead-ads.md.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from leads.models import Lead, Organization
from leads.serializers import SOURCE_RE

# Meta's standard questions (https://developers.facebook.com/docs/marketing-api/guides/lead-ads/):
# the ones a lead is made of. Every other answer goes to the lead's metadata under its own key.
DEFAULT_MAPPING: dict[str, str] = {
    "full_name": "name",
    "first_name": "first_name",
    "last_name": "last_name",
    "phone_number": "phone",
    "email": "email",
    "work_email": "email",
    "work_phone_number": "phone",
}
# What a question can be mapped to. first_name + last_name are joined into the name when
# no full name was given; "metadata" keeps it under its own key (the default for unmapped
# questions), "metadata.<key>" under another key, "ignore" leaves it in the raw payload only.
LEAD_TARGETS = ("name", "first_name", "last_name", "phone", "email", "message", "metadata", "ignore")
METADATA_KEY_RE = re.compile(r"^metadata\.([A-Za-z0-9_\-]{1,64})$")
MAX_MAPPING_ENTRIES = 100


def validate_mapping(mapping: object) -> None:
    """Raise ValidationError naming every bad entry of a form's field mapping."""
    if not isinstance(mapping, dict):
        raise ValidationError('The mapping must be a JSON object such as {"mobile": "phone", "budget": "metadata.budget"}.')
    if len(mapping) > MAX_MAPPING_ENTRIES:
        raise ValidationError(f"The mapping has {len(mapping)} entries; at most {MAX_MAPPING_ENTRIES}.")
    problems = []
    for question, target in mapping.items():
        if not isinstance(question, str) or not question.strip():
            problems.append("A question name is empty.")
        elif not isinstance(target, str) or not (target in LEAD_TARGETS or METADATA_KEY_RE.match(target)):
            problems.append(
                f"{question!r} → {target!r}: map a question to one of {', '.join(LEAD_TARGETS)}, or metadata.<key> "
                "(letters, digits, _ and -)."
            )
    if problems:
        raise ValidationError(problems)


class MetaPage(models.Model):
    """A Facebook page whose lead forms feed an organization. Its id routes the leadgen webhook."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="meta_pages")
    page_id = models.CharField(max_length=64, unique=True, help_text="The Facebook page id (the webhook's entry id).")
    name = models.CharField(max_length=200, blank=True, default="")
    # A page access token with leads_retrieval (never rendered back; see metaleads/admin.py).
    access_token = models.TextField(blank=True, default="")
    active = models.BooleanField(default=True, help_text="Off: webhooks for this page are ignored and it is not reconciled.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "Meta page"

    def __str__(self) -> str:
        return f"{self.name or 'page'} ({self.page_id})"


class MetaLeadForm(models.Model):
    class Consent(models.TextChoices):
        NONE = "none", "No consent (WhatsApp/SMS greeting skipped)"
        FORM = "form", "Every lead of this form consented (the form's own opt-in)"
        QUESTION = "question", "The answer to a question (or a custom disclaimer checkbox)"

    page = models.ForeignKey(MetaPage, on_delete=models.CASCADE, related_name="forms")
    form_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200, blank=True, default="")
    mapping = models.JSONField(
        default=dict, blank=True,
        help_text='Question name → lead field, on top of the default mapping, e.g. {"mobile": "phone", '
                  '"budget": "metadata.budget", "comments": "message"}. Targets: ' + ", ".join(LEAD_TARGETS) + ", metadata.<key>.",
    )
    source = models.CharField(max_length=64, default="meta", help_text="The leads' source (lower case letters, digits, _ . : -).")
    campaign = models.CharField(
        max_length=128, blank=True, default="", help_text="Empty: the ad's campaign name from Meta.",
    )
    consent = models.CharField(max_length=16, choices=Consent.choices, default=Consent.NONE)
    consent_question = models.CharField(
        max_length=200, blank=True, default="",
        help_text="With 'the answer to a question': the question name (or custom disclaimer checkbox key) carrying the opt-in.",
    )
    consent_answers = models.CharField(
        max_length=300, blank=True, default="yes,true,1,y,agree,i agree,accept,accepted,sim,si,sí,oui,ja",
        help_text="Comma-separated answers (any case) that count as opt-in.",
    )
    reconcile = models.BooleanField(default=True, help_text="Poll Meta for leads whose webhook never came.")
    # Reconciliation state: leads created after `watermark` minus the overlap margin are listed next time.
    watermark = models.DateTimeField(null=True, blank=True)
    next_reconcile_at = models.DateTimeField(null=True, blank=True)
    last_reconciled_at = models.DateTimeField(null=True, blank=True)
    last_reconcile_error = models.CharField(max_length=500, blank=True, default="")
    # A pass that stopped with pages left (reconcile.Pass): the next run follows its cursor.
    reconcile_resume = models.JSONField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "Meta lead form"

    def __str__(self) -> str:
        return f"{self.name or 'form'} ({self.form_id})"

    def effective_mapping(self) -> dict[str, str]:
        return {**DEFAULT_MAPPING, **(self.mapping or {})}

    def consent_answer_set(self) -> frozenset[str]:
        return frozenset(a.strip().lower() for a in self.consent_answers.split(",") if a.strip())

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        try:
            validate_mapping(self.mapping)
        except ValidationError as exc:
            errors["mapping"] = exc.messages
        if not SOURCE_RE.match(self.source or ""):
            errors["source"] = ["Use 1-64 characters: lower-case letters, digits, and _ . : -"]
        if self.consent == self.Consent.QUESTION:
            if not self.consent_question.strip():
                errors["consent_question"] = ["Name the question that carries the opt-in, or choose another consent rule."]
            if not self.consent_answer_set():
                errors["consent_answers"] = ["List at least one answer that counts as opt-in."]
        if errors:
            raise ValidationError(errors)


class MetaLeadgen(models.Model):
    """One Meta lead (leadgen id), recorded before the webhook is answered."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        INGESTED = "ingested", "Ingested"
        FAILED = "failed", "Failed"

    class Via(models.TextChoices):
        WEBHOOK = "webhook", "Webhook"
        RECONCILE = "reconcile", "Reconciliation"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="meta_leadgens")
    page = models.ForeignKey(MetaPage, on_delete=models.CASCADE, related_name="leadgens")
    form = models.ForeignKey(MetaLeadForm, on_delete=models.SET_NULL, null=True, blank=True, related_name="leadgens")
    leadgen_id = models.CharField(max_length=64, unique=True)
    ad_id = models.CharField(max_length=64, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    via = models.CharField(max_length=16, choices=Via.choices, default=Via.WEBHOOK)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True, default="")
    errors = models.JSONField(default=dict, blank=True, help_text="Per-field validation errors of the lead Meta sent.")
    lead = models.ForeignKey(Lead, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    meta_created_at = models.DateTimeField(null=True, blank=True, help_text="When Meta says the lead was submitted.")
    received_at = models.DateTimeField(default=timezone.now)
    # A worker holds the row until then (a killed one's row is free again after it);
    # a pending row whose next attempt is long overdue is re-enqueued by the sweep.
    lease_until = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "Meta lead"
        indexes = [
            models.Index(fields=["next_attempt_at"], condition=models.Q(status="pending"), name="metaleadgen_pending_idx"),
            models.Index(fields=["organization", "-received_at"], name="metaleadgen_org_received_idx"),
        ]

    def __str__(self) -> str:
        return f"Meta lead {self.leadgen_id} ({self.status})"
