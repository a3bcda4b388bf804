"""The CRM sync queue: one row per contact, and a log of pushes.

`ContactSync` is where changes coalesce. Every event about a contact bumps its
`version` and makes it PENDING; a push reads the contact's *current* state,
so ten changes before the next push are one upsert with the latest values.
A change that lands while a push is in flight bumps `version` past the
version being pushed, so the row stays PENDING and goes again: nothing is lost
to a race.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from leads.models import Contact, Organization


class ContactSync(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        IN_FLIGHT = "in_flight", "In flight"
        SYNCED = "synced", "Synced"
        FAILED = "failed", "Failed (refused by the CRM)"
        DEAD = "dead", "Dead-lettered (retries exhausted)"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    contact = models.OneToOneField(Contact, on_delete=models.CASCADE, related_name="crm_sync")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    version = models.PositiveIntegerField(default=1, help_text="Bumped by every change to the contact or its leads.")
    synced_version = models.PositiveIntegerField(default=0, help_text="The version the CRM last accepted.")
    pushing_version = models.PositiveIntegerField(null=True, blank=True, help_text="The version of the push in flight.")
    next_attempt_at = models.DateTimeField(help_text="Not pushed before this (backoff, a CRM's Retry-After).")
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When the push in flight took it.")
    attempts = models.PositiveIntegerField(default=0, help_text="Failed attempts since the last success.")
    adapter = models.CharField(max_length=16, blank=True, default="", help_text="The CRM it was last pushed to.")
    crm_id = models.CharField(max_length=64, blank=True, default="", help_text="The record's id in the CRM.")
    id_property = models.CharField(
        max_length=100, blank=True, default="",
        help_text="The CRM property that identifies the record (email, or the phone property), kept once chosen.",
    )
    id_value = models.CharField(max_length=254, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    changed_at = models.DateTimeField(help_text="The latest change.")
    synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["organization", "next_attempt_at"], condition=Q(state="pending"), name="crmsync_due_idx"),
            models.Index(fields=["claimed_at"], condition=Q(state="in_flight"), name="crmsync_in_flight_idx"),
            models.Index(fields=["state", "-changed_at"], name="crmsync_state_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.contact} → {self.adapter or 'CRM'} ({self.state})"


class CrmPush(models.Model):
    """One request to a CRM: what /metrics counts (429s, pushes a minute) and admin lists."""

    class Outcome(models.TextChoices):
        OK = "ok", "Accepted"
        PARTIAL = "partial", "Accepted in part"
        RATE_LIMITED = "rate_limited", "Rate limited (429)"
        REJECTED = "rejected", "Refused (4xx)"
        ERROR = "error", "Failed (5xx, timeout)"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    adapter = models.CharField(max_length=16)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    items = models.PositiveIntegerField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.FloatField()
    detail = models.CharField(max_length=2000, blank=True, default="")  # a 207 can list many errors
    at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "CRM push"
        verbose_name_plural = "CRM pushes"

    def __str__(self) -> str:
        return f"{self.adapter} {self.outcome} ({self.items})"
