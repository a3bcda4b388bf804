"""Writes for routing: assign a new lead, reassign it, escalate it, note that a rep acted.

`assign_new_lead` runs inside the transaction that opens the lead (called by
leads.services.lead_ingest), so a lead is never stored without its owner nor
assigned without being stored. Picking the next rep locks the team's row
until commit: two leads captured at the same instant queue for the pick
instead of both reading the same "next" rep. Capacity-limited reps' rows are
locked too (in id order, so concurrent picks never deadlock), so a rep in two
teams cannot be handed two leads past their limit at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from conversations import timeline
from leads.models import Lead, LeadEvent, Organization
from routing import rules as routing_rules
from routing import selectors
from routing.models import Assignment, Notification, Rep, Team, TeamMember
from swiftex.events import emit

logger = logging.getLogger(__name__)

# How often a lead that arrived while nobody in its team was available is offered again.
UNASSIGNED_RETRY = timedelta(minutes=5)


@dataclass
class Pick:
    rep: Rep | None
    team: str = ""
    skipped: dict[str, str] = field(default_factory=dict)  # rep name -> why they were passed over
    gone: bool = False  # the rule or team was deleted or switched off since this process cached the rules


def routes_leads(org: Organization) -> bool:
    """Whether new leads of `org` get an owner (it has active rules or a fallback owner). Cached, no query."""
    return bool(org.fallback_owner_id or selectors.rules(org.pk))


def matched_team(org: Organization, *, source: str, campaign: str, phone: str | None, metadata: dict) -> int:
    """The team the first matching rule names (0: none), from the cached rules: no query."""
    rule = routing_rules.first_match(selectors.rules(org.pk), source=source, campaign=campaign, phone=phone, metadata=metadata)
    return rule.team_id if rule else 0


def lock_teams(team_ids: set[int]) -> None:
    """Take these teams' locks now, in id order (the picks take them again, at no cost)."""
    if team_ids:
        list(Team.objects.select_for_update().filter(pk__in=team_ids).order_by("pk").values_list("pk", flat=True))


def has_assignment(lead_id: int) -> bool:
    return Assignment.objects.filter(lead_id=lead_id).exists()


def assign_new_lead(*, org: Organization, lead_id: int, source: str, campaign: str, phone: str | None,
                    metadata: dict, contact_label: str, now: datetime) -> Assignment:
    """Route a lead that was just opened, inside the transaction that opened it."""
    rules = selectors.rules(org.pk)
    rule = routing_rules.first_match(rules, source=source, campaign=campaign, phone=phone, metadata=metadata)
    pick = _next_rep(rule.team_id, org, now, rule_id=rule.id) if rule else Pick(None)
    if pick.gone:  # an admin just deleted or switched off the rule: match again on fresh rules
        selectors.forget_rules(org.pk)
        rule = routing_rules.first_match(selectors.rules(org.pk), source=source, campaign=campaign, phone=phone, metadata=metadata)
        pick = _next_rep(rule.team_id, org, now, rule_id=rule.id) if rule else Pick(None)
        rule = None if pick.gone else rule
    data = {"rule": rule.name if rule else None, "team": pick.team or None}
    if pick.skipped:
        data["skipped"] = pick.skipped
    no_team = "nobody in the team was available" if rule else "no routing rule matched"
    if pick.rep is not None:
        data["via"] = "rule"
    elif org.fallback_owner_id:
        pick.rep, why = _fallback_owner(org, now)
        data.update({"via": "fallback", "reason": no_team} if pick.rep else {"fallback_skipped": why})
    if pick.rep is not None and data["via"] == "fallback" and rule:
        escalate_at = now + UNASSIGNED_RETRY  # offered to the team again until one of them is back
    elif pick.rep is not None:
        escalate_at = _escalation_time(org, now) if rule else None
    else:  # nobody available now: look again until someone is
        escalate_at = now + UNASSIGNED_RETRY if rule or org.fallback_owner_id else None
    assignment = Assignment.objects.create(
        lead_id=lead_id, rep=pick.rep, team_id=rule.team_id if rule else None, rule_id=rule.id if rule else None,
        assigned_at=now, escalate_at=escalate_at,
    )
    if pick.rep is None:
        data["reason"] = no_team + (f" and the fallback owner is {data['fallback_skipped']}" if org.fallback_owner_id
                                    else " and no fallback owner is set")
        timeline.record(lead_id, ("lead.unassigned", data, now))
        return assignment
    timeline.record(lead_id, ("lead.assigned", {**data, "rep": str(pick.rep), "rep_id": pick.rep.pk}, now))
    _notify(pick.rep, lead_id, f"New lead: {contact_label} ({source})", now)
    return assignment


def reassign(lead: Lead, to: Rep, *, by: str, reason: str, now: datetime | None = None) -> Assignment:
    """Hand a lead to `to` by hand (admin, manager). The escalation clock starts again."""
    now = now or timezone.now()
    org = lead.organization
    with transaction.atomic():
        assignment = Assignment.objects.select_for_update(of=("self",)).select_related("rep__user").filter(lead=lead).first()
        previous = assignment.rep if assignment else None
        if assignment is None:
            assignment = Assignment(lead=lead, assigned_at=now)
        if previous is not None and previous.pk == to.pk:
            return assignment
        assignment.rep, assignment.assigned_at, assignment.acted_at = to, now, None
        assignment.escalate_at = _escalation_time(org, now) if assignment.team_id else None
        assignment.reassignments += 1 if previous else 0
        assignment.save()
        _record_reassignment(lead.pk, previous, to, {"reason": reason, "by": by}, now)
    return assignment


def record_action(lead_id: int, now: datetime | None = None) -> None:
    """A person replied to the lead or moved its status: the lead is being worked, escalation stops."""
    now = now or timezone.now()
    Assignment.objects.filter(lead_id=lead_id, acted_at__isnull=True).update(acted_at=now, escalate_at=None)


def escalate_due(*, limit: int = 200, now: datetime | None = None) -> int:
    """Move leads whose rep did not act in time to a teammate; returns how many moved.

    One transaction per lead (SKIP LOCKED, so any number of workers may run
    this): a team's lock is never held while another team's is wanted.
    """
    now = now or timezone.now()
    moved = 0
    for _ in range(limit):
        with transaction.atomic():
            assignment = (
                Assignment.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("lead__organization", "rep__user", "team")
                .filter(escalate_at__lte=now).order_by("escalate_at").first()
            )
            if assignment is None:
                break
            moved += _escalate(assignment, now)
    return moved


def _escalate(assignment: Assignment, now: datetime) -> int:
    """Move an overdue lead to a teammate; give an unassigned lead its first owner; offer a team's
    lead the fallback owner is holding to the team again."""
    lead, org, previous = assignment.lead, assignment.lead.organization, assignment.rep
    waited = int((now - assignment.assigned_at).total_seconds() // 60)
    if lead.status not in Lead.OPEN_STATUSES or assignment.acted_at:
        return _stop_escalating(assignment)
    if assignment.team_id is None:  # no rule matched: only the fallback owner can take it
        return _offer_to_fallback_owner(assignment, org, now, waited) if previous is None else _stop_escalating(assignment)
    held, holding_as_fallback = _history(lead.pk)
    held |= {previous.pk} if previous else set()
    if previous is not None and org.escalation_minutes == 0 and not holding_as_fallback:
        return _stop_escalating(assignment)
    # Each teammate gets the lead once: round the team it would go back and forth for ever
    # (two reps: every escalation_minutes, with a notification each time).
    pick = _next_rep(assignment.team_id, org, now, exclude=held)
    if pick.gone:
        return _stop_escalating(assignment)
    if pick.rep is None:
        if previous is None and org.fallback_owner_id:
            # Nobody in the team yet, but the fallback owner may be back: they hold it meanwhile.
            return _offer_to_fallback_owner(assignment, org, now, waited, keep_offering_to_team=True)
        if previous is None or holding_as_fallback:
            assignment.escalate_at = now + UNASSIGNED_RETRY  # still nobody: it waits (unassigned, or with the fallback owner)
            assignment.save(update_fields=["escalate_at"])
            return 0
        # Nobody to hand it to now; the current rep keeps it and a person sees why.
        _stop_escalating(assignment)
        others = TeamMember.objects.filter(team_id=assignment.team_id).exclude(rep_id__in=held).exists()
        reason = "no other team member is available" if others else "every team member has had this lead"
        timeline.record(lead.pk, ("lead.escalation_skipped", {
            "rep": str(previous), "waited_minutes": waited, "reason": reason, "skipped": pick.skipped,
        }, now))
        return 0
    assignment.rep, assignment.assigned_at, assignment.escalate_at = pick.rep, now, _escalation_time(org, now)
    assignment.reassignments += 1 if previous else 0
    assignment.save(update_fields=["rep", "assigned_at", "escalate_at", "reassignments"])
    reason = ("a team member is available again" if holding_as_fallback else "escalation") if previous \
        else "nobody was available when it arrived"
    _record_reassignment(lead.pk, previous, pick.rep, {
        "reason": reason, "waited_minutes": waited, "team": assignment.team.name, "skipped": pick.skipped,
    }, now)
    return 1


def _stop_escalating(assignment: Assignment) -> int:
    assignment.escalate_at = None
    assignment.save(update_fields=["escalate_at"])
    return 0


def _offer_to_fallback_owner(assignment: Assignment, org: Organization, now: datetime, waited: int, *,
                             keep_offering_to_team: bool = False) -> int:
    rep, _ = _fallback_owner(org, now) if org.fallback_owner_id else (None, "")
    if rep is None:
        assignment.escalate_at = now + UNASSIGNED_RETRY if org.fallback_owner_id or keep_offering_to_team else None
        assignment.save(update_fields=["escalate_at"])
        return 0
    assignment.rep, assignment.assigned_at = rep, now
    assignment.escalate_at = now + UNASSIGNED_RETRY if keep_offering_to_team else None
    assignment.save(update_fields=["rep", "assigned_at", "escalate_at"])
    _record_reassignment(assignment.lead_id, None, rep, {
        "reason": "the fallback owner is available again", "waited_minutes": waited,
        "team": assignment.team.name if assignment.team_id else None, "via": "fallback",
    }, now)
    return 1


def _fallback_owner(org: Organization, now: datetime) -> tuple[Rep | None, str]:
    """The organization's fallback owner if they can take a lead now, else None and why not.
    Working hours do not count: the fallback owner is the catch-all, not a shift."""
    rep = Rep.objects.select_related("user").filter(pk=org.fallback_owner_id).first()
    if rep is None:
        return None, "gone (deleted)"
    why = rep.unavailable_because(now, org.timezone, working_hours=False)
    return (None, why) if why else (rep, "")


def _history(lead_id: int) -> tuple[set[int], bool]:
    """The reps this lead has been assigned to, from its timeline, and whether it is with the
    fallback owner because its team had nobody available (its latest assignment says so)."""
    held, via_fallback = set(), False
    for kind, data in LeadEvent.objects.filter(lead_id=lead_id, kind__in=["lead.assigned", "lead.reassigned"]).order_by(
            "occurred_at", "pk").values_list("kind", "data"):
        held.update(rep_id for rep_id in ((data.get("rep_id"),) if kind == "lead.assigned" else (data.get("from_id"), data.get("to_id")))
                    if isinstance(rep_id, int))
        via_fallback = data.get("via") == "fallback"
    return held, via_fallback


def _record_reassignment(lead_id: int, previous: Rep | None, to: Rep, data: dict, now: datetime) -> None:
    timeline.record(lead_id, ("lead.reassigned", {
        **data, "from": str(previous) if previous else None, "from_id": previous.pk if previous else None,
        "to": str(to), "to_id": to.pk,
    }, now))
    if "by" in data:
        why = f"reassigned to you by {data['by']}"
    elif previous is not None:
        why = f"reassigned to you after {data['waited_minutes']} min without action"
    else:
        why = f"assigned to you ({data['reason']}, {data['waited_minutes']} min ago)"
    _notify(to, lead_id, f"Lead {lead_id} {why}", now)
    emit("lead.reassigned", organization_id=to.organization_id, data={"lead_id": lead_id, "rep_id": to.pk})


def _escalation_time(org: Organization, now: datetime) -> datetime | None:
    return now + timedelta(minutes=org.escalation_minutes) if org.escalation_minutes else None


def _next_rep(team_id: int, org: Organization, now: datetime, exclude: set[int] = frozenset(), *,
              rule_id: int | None = None) -> Pick:
    """The team's next available rep (smooth weighted round robin), under the team's row lock.
    With `rule_id`, only while that rule still exists and is active (the rules are cached)."""
    teams = Team.objects.select_for_update(of=("self",)).filter(pk=team_id)
    if rule_id is not None:
        teams = teams.filter(rules__pk=rule_id, rules__active=True)
    team = teams.first()
    if team is None:
        return Pick(None, gone=True)
    members = list(TeamMember.objects.filter(team_id=team_id).select_related("rep__user").order_by("pk"))
    pick = Pick(None, team=team.name)
    candidates = []
    for member in members:
        if member.rep_id in exclude:
            continue
        if why := member.rep.unavailable_because(now, org.timezone):
            pick.skipped[str(member.rep)] = why
        else:
            candidates.append(member)
    limited = sorted(member.rep_id for member in candidates if member.rep.max_open_leads)
    if limited:
        list(Rep.objects.select_for_update().filter(pk__in=limited).order_by("pk").values_list("pk", flat=True))
        counts = selectors.open_lead_counts(limited)
        for member in [m for m in candidates if m.rep.max_open_leads and counts.get(m.rep_id, 0) >= m.rep.max_open_leads]:
            pick.skipped[str(member.rep)] = f"at capacity ({counts[member.rep_id]} open leads)"
            candidates.remove(member)
    if not candidates:
        return pick
    weighted = team.distribution == Team.Distribution.WEIGHTED
    total = 0
    for member in candidates:
        weight = member.weight if weighted else 1
        member.current_weight += weight
        total += weight
    chosen = max(candidates, key=lambda member: member.current_weight)  # first (lowest id) among equals
    chosen.current_weight -= total
    TeamMember.objects.bulk_update(candidates, ["current_weight"])
    pick.rep = chosen.rep
    return pick


def _notify(rep: Rep, lead_id: int, text: str, now: datetime) -> None:
    wants_email = rep.email_notifications and bool(rep.user.email)
    Notification.objects.create(
        rep=rep, lead_id=lead_id, text=text[:300], created_at=now,
        email=Notification.Email.PENDING if wants_email else Notification.Email.NONE,
    )
