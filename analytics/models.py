"""What analytics keeps: one fact row per lead, and hourly roll-ups of them.

Both are derived data, written only by `analytics.services.refresh` from the
source of truth (leads, messages, timeline, assignments), so they can always be
rebuilt (`manage.py analytics_rebuild`).
"""

from __future__ import annotations

from django.db import models

from leads.models import Lead, Organization


class LeadFact(models.Model):
    """One lead's speed-to-lead facts: when it came, when and how it was answered, how far it went."""

    lead = models.OneToOneField(Lead, on_delete=models.CASCADE, primary_key=True, related_name="fact")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    source = models.CharField(max_length=64)
    campaign = models.CharField(max_length=128, blank=True, default="")
    status = models.CharField(max_length=16)
    captured_at = models.DateTimeField()
    first_response_at = models.DateTimeField(null=True, blank=True)
    first_response_ms = models.IntegerField(null=True, blank=True, help_text="Captured to the provider accepting the first message.")
    channel = models.CharField(max_length=16, blank=True, default="", help_text="Channel of the first message.")
    delivered_at = models.DateTimeField(null=True, blank=True, help_text="First outbound message delivered (or read).")
    read_at = models.DateTimeField(null=True, blank=True)
    replied_at = models.DateTimeField(null=True, blank=True, help_text="The contact's first message on this lead.")
    qualified_at = models.DateTimeField(null=True, blank=True, help_text="First moved to qualified or won.")
    rep = models.ForeignKey("routing.Rep", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    rep_acted_at = models.DateTimeField(null=True, blank=True, help_text="The assigned rep's first reply or status change.")
    updated_at = models.DateTimeField()

    class Meta:
        indexes = [
            # Every dashboard query is "this organization, this date range".
            models.Index(fields=["organization", "captured_at"], name="fact_org_captured_idx",
                         include=["first_response_ms", "channel", "source", "campaign"]),
        ]

    def __str__(self) -> str:
        return f"facts of lead {self.lead_id}"


class HourlyStat(models.Model):
    """Counts per organization × source × campaign × UTC hour of capture, kept by deltas."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    source = models.CharField(max_length=64)
    campaign = models.CharField(max_length=128, blank=True, default="")
    hour = models.DateTimeField(help_text="Start of the UTC hour the leads were captured in.")
    leads = models.IntegerField(default=0)
    greeted = models.IntegerField(default=0, help_text="Leads with a first response.")
    delivered = models.IntegerField(default=0)
    read = models.IntegerField(default=0)
    replied = models.IntegerField(default=0)
    qualified = models.IntegerField(default=0)
    within_5s = models.IntegerField(default=0)
    within_60s = models.IntegerField(default=0)
    within_5m = models.IntegerField(default=0)
    response_ms_sum = models.BigIntegerField(default=0, help_text="Sum of first-response times, for means.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "hour", "source", "campaign"], name="hourly_stat_bucket"),
        ]

    def __str__(self) -> str:
        return f"{self.source}/{self.campaign or '-'} at {self.hour:%Y-%m-%d %H:00}"
