"""Who answers a lead: reps, teams, routing rules, assignments and the reps' notifications.

A new lead is assigned in the transaction that opens it (routing/services.py):
the organization's rules are tried in order, the first that matches names a
team, and the team hands the lead to its next available rep. `Assignment`
keeps who holds each lead and since when; when the rep has not acted within
the organization's escalation time the lead moves on to a teammate.
"""

from __future__ import annotations

import datetime
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from leads.models import Lead, Organization, validate_timezone, validate_weekdays


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _validate_prefixes(value: str) -> None:
    bad = [part for part in _split(value) if not part.lstrip("+").isdigit()]
    if bad:
        raise ValidationError(f"Phone prefixes are digits with an optional +, e.g. +44, +1415 (not {', '.join(bad)}).")


def _validate_countries(value: str) -> None:
    bad = [part for part in _split(value) if not (len(part) == 2 and part.isalpha())]
    if bad:
        raise ValidationError(f"Two-letter ISO country codes, e.g. GB, IE (not {', '.join(bad)}).")


class Rep(models.Model):
    """A person who works leads: a login plus how, when and how many leads they take."""

    class Role(models.TextChoices):
        REP = "rep", "Rep"
        MANAGER = "manager", "Manager (sees every lead of the organization)"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="rep")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="reps")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.REP)
    max_open_leads = models.PositiveIntegerField(
        default=0, help_text="New leads skip this rep while they hold this many open leads. 0: no limit.",
    )
    out_of_office_until = models.DateTimeField(
        null=True, blank=True, help_text="Takes no new leads before this moment. Empty: in the office.",
    )
    timezone = models.CharField(
        max_length=64, blank=True, default="", validators=[validate_timezone],
        help_text="For working hours. Empty: the organization's time zone.",
    )
    working_hours_start = models.TimeField(null=True, blank=True, help_text="Empty start and end: takes leads at any hour.")
    working_hours_end = models.TimeField(null=True, blank=True, help_text="Before the start for a shift past midnight.")
    working_days = models.CharField(
        max_length=20, default="1,2,3,4,5", validators=[validate_weekdays],
        help_text="ISO weekdays the rep works: 1 = Monday … 7 = Sunday, comma-separated.",
    )
    email_notifications = models.BooleanField(default=False, help_text="Also e-mail the rep when a lead is assigned to them.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.user.get_full_name() or self.user.get_username()

    def clean(self) -> None:
        super().clean()
        if (self.working_hours_start is None) != (self.working_hours_end is None):
            raise ValidationError({"working_hours_end": "Set both the start and the end of the working hours, or neither."})
        if self.working_hours_start is not None and self.working_hours_start == self.working_hours_end:
            raise ValidationError({"working_hours_end": "Working hours cannot start and end at the same time."})

    @property
    def is_manager(self) -> bool:
        return self.role == self.Role.MANAGER

    def unavailable_because(self, now: datetime.datetime, org_timezone: str, *, working_hours: bool = True) -> str:
        """Why this rep takes no new lead at `now` ("" when they do); `working_hours` False:
        their shift does not count (the fallback owner, the catch-all)."""
        if not self.user.is_active:
            return "login disabled"
        if self.out_of_office_until and now < self.out_of_office_until:
            return "out of office"
        if self.working_hours_start is None or not working_hours:
            return ""
        local = now.astimezone(zoneinfo.ZoneInfo(self.timezone or org_timezone))
        start, end, clock = self.working_hours_start, self.working_hours_end, local.time()
        # A shift past midnight belongs to the day it started on.
        if start < end:
            on_shift, day = start <= clock < end, local.date()
        else:
            on_shift = clock >= start or clock < end
            day = local.date() - datetime.timedelta(days=1) if clock < end else local.date()
        if not on_shift or str(day.isoweekday()) not in _split(self.working_days):
            return "outside working hours"
        return ""


class Team(models.Model):
    class Distribution(models.TextChoices):
        ROUND_ROBIN = "round_robin", "Round robin (one each in turn)"
        WEIGHTED = "weighted", "Weighted (in proportion to each member's weight)"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="teams")
    name = models.CharField(max_length=100)
    distribution = models.CharField(max_length=16, choices=Distribution.choices, default=Distribution.ROUND_ROBIN)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="team_name_per_org")]

    def __str__(self) -> str:
        return self.name


class TeamMember(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="members")
    rep = models.ForeignKey(Rep, on_delete=models.CASCADE, related_name="memberships")
    weight = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Weighted teams: a member with weight 2 gets twice the leads of one with weight 1.",
    )
    # Smooth weighted round robin (as nginx balances upstreams): each pick adds every
    # available member's weight and takes the highest, which then gives back the total.
    # Members who were away do not pile up credit, so no one gets a burst on return.
    current_weight = models.IntegerField(default=0, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "rep"], name="team_member_once")]

    def __str__(self) -> str:
        return f"{self.rep} in {self.team}"


class RoutingRule(models.Model):
    """Leads that match every condition set here go to `team`. Empty conditions match anything."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="routing_rules")
    position = models.PositiveIntegerField(default=0, help_text="Rules are tried from the lowest position up; the first match wins.")
    name = models.CharField(max_length=100)
    active = models.BooleanField(default=True)
    sources = models.CharField(max_length=500, blank=True, default="", help_text="Comma-separated, any case, e.g. website, facebook.")
    campaigns = models.CharField(max_length=500, blank=True, default="", help_text="Comma-separated, any case.")
    countries = models.CharField(
        max_length=200, blank=True, default="", validators=[_validate_countries],
        help_text="Two-letter country codes of the lead's phone, e.g. GB, IE.",
    )
    phone_prefixes = models.CharField(
        max_length=200, blank=True, default="", validators=[_validate_prefixes],
        help_text="Country or area codes the phone starts with, e.g. +44, +1415.",
    )
    metadata_key = models.CharField(max_length=100, blank=True, default="", help_text="A field of the submission's metadata.")
    metadata_values = models.CharField(
        max_length=500, blank=True, default="",
        help_text="Comma-separated values the metadata field may have (any case). Empty: the field only has to be present.",
    )
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="rules")

    class Meta:
        ordering = ["position", "pk"]
        indexes = [models.Index(fields=["organization", "position"], name="routing_rule_order_idx")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        if self.metadata_values and not self.metadata_key:
            raise ValidationError({"metadata_key": "Name the metadata field the values are for."})
        if self.team_id and self.organization_id and self.team.organization_id != self.organization_id:
            raise ValidationError({"team": "The team belongs to another organization."})


class Assignment(models.Model):
    """Who holds a lead, since when, and when it escalates if they do nothing."""

    lead = models.OneToOneField(Lead, on_delete=models.CASCADE, primary_key=True, related_name="assignment")
    rep = models.ForeignKey(Rep, on_delete=models.PROTECT, null=True, blank=True, related_name="assignments")
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="assignments")
    rule = models.ForeignKey(RoutingRule, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    assigned_at = models.DateTimeField()
    acted_at = models.DateTimeField(null=True, blank=True, help_text="The rep's first reply or status change.")
    escalate_at = models.DateTimeField(null=True, blank=True, help_text="Moves to a teammate then, unless the rep acted.")
    reassignments = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [
            models.Index(fields=["rep", "assigned_at"], name="assignment_rep_idx"),
            models.Index(fields=["escalate_at"], condition=Q(escalate_at__isnull=False), name="assignment_escalation_due_idx"),
        ]

    def __str__(self) -> str:
        return f"lead {self.lead_id} → {self.rep or 'nobody'}"


class Notification(models.Model):
    """In-app news for a rep (a lead assigned to them), optionally also sent by e-mail."""

    class Email(models.TextChoices):
        NONE = "", "Not e-mailed"
        PENDING = "pending", "Waiting to be sent"
        SENDING = "sending", "Being sent"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    rep = models.ForeignKey(Rep, on_delete=models.CASCADE, related_name="notifications")
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="+")
    text = models.CharField(max_length=300)
    created_at = models.DateTimeField()
    read_at = models.DateTimeField(null=True, blank=True)
    email = models.CharField(max_length=8, choices=Email.choices, blank=True, default=Email.NONE)
    email_error = models.CharField(max_length=300, blank=True, default="")
    email_started_at = models.DateTimeField(null=True, blank=True, help_text="When the e-mail was handed to the mail server.")

    class Meta:
        indexes = [
            models.Index(fields=["rep", "-created_at"], name="notification_rep_idx"),
            models.Index(fields=["created_at"], condition=Q(email="pending"), name="notification_email_due_idx"),
        ]

    def __str__(self) -> str:
        return self.text
