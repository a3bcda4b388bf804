"""Reads for the rep pages: which leads a rep may see, in what order, and one lead in full.

Every query starts from `visible_leads(rep)`: the rep's organization only,
and only their own leads when the organization says so (managers see all).
A lead outside it does not exist for that rep (404), whatever id the URL holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Case, IntegerField, Max, Q, QuerySet, Value, When

from conversations.models import Message, ScheduledJob
from crmsync.models import ContactSync
from leads.models import Lead, LeadEvent
from routing.models import Rep

PAGE_SIZE = 50

# Most urgent first: a lead no one could greet (still new), then leads no person
# has acted on yet, then the rest; newest first within each (speed to lead).
URGENCY = Case(
    When(status=Lead.Status.NEW, then=Value(0)),
    When(Q(assignment__acted_at__isnull=True), then=Value(1)),
    default=Value(2), output_field=IntegerField(),
)


def visible_leads(rep: Rep) -> QuerySet[Lead]:
    leads = Lead.objects.filter(organization_id=rep.organization_id)
    if rep.organization.reps_see_only_own_leads and not rep.is_manager:
        leads = leads.filter(assignment__rep=rep)
    return leads


def can_see_everyone(rep: Rep) -> bool:
    return rep.is_manager or not rep.organization.reps_see_only_own_leads


@dataclass(frozen=True)
class Filters:
    status: str = "open"  # "open", "closed", "all" or a status
    mine: bool = True
    source: str = ""
    q: str = ""


def lead_list(rep: Rep, filters: Filters) -> QuerySet[Lead]:
    leads = visible_leads(rep).select_related("contact", "assignment__rep__user")
    if filters.mine or not can_see_everyone(rep):
        leads = leads.filter(assignment__rep=rep)
    if filters.status == "open":
        leads = leads.filter(status__in=Lead.OPEN_STATUSES)
    elif filters.status == "closed":
        leads = leads.exclude(status__in=Lead.OPEN_STATUSES)
    elif filters.status in Lead.Status.values:
        leads = leads.filter(status=filters.status)
    if filters.source:
        leads = leads.filter(source__iexact=filters.source)
    if q := filters.q.strip():
        match = Q(contact__name__icontains=q) | Q(contact__email__icontains=q) | Q(campaign__icontains=q)
        digits = "".join(ch for ch in q if ch.isdigit())
        if len(digits) >= 3:
            match |= Q(contact__phone__contains=digits)
        leads = leads.filter(match)
    return leads.annotate(urgency=URGENCY).order_by("urgency", "-captured_at", "-pk")


def last_inbound_leads(lead_ids: list[int]) -> set[int]:
    """Of these leads, those whose latest message came from the lead (waiting for an answer)."""
    latest = {}
    for lead_id, direction in (
        Message.objects.filter(lead_id__in=lead_ids).order_by("lead_id", "-created_at", "-pk")
        .distinct("lead_id").values_list("lead_id", "direction")
    ):
        latest[lead_id] = direction
    return {lead_id for lead_id, direction in latest.items() if direction == Message.Direction.INBOUND}


def sources(rep: Rep) -> list[str]:
    return list(visible_leads(rep).order_by().values_list("source", flat=True).distinct()[:50])


def lead_for(rep: Rep, lead_id: int) -> Lead | None:
    return (
        visible_leads(rep).select_related("contact", "organization", "assignment__rep__user", "assignment__team")
        .filter(pk=lead_id).first()
    )


def version(lead: Lead) -> str:
    """Changes whenever something on the lead page would: a new timeline entry, message or status."""
    events = LeadEvent.objects.filter(lead=lead).aggregate(n=Max("pk"))["n"] or 0
    messages = Message.objects.filter(lead=lead).aggregate(
        n=Max("pk"), s=Max("sent_at"), d=Max("delivered_at"), r=Max("read_at"), f=Max("failed_at"),
    )
    stamp = "|".join(str(value.timestamp() if hasattr(value, "timestamp") else value) for value in messages.values())
    return f"{events}:{stamp}:{lead.status}"  # `lead` was read for this request


def lead_page(lead: Lead) -> dict:
    events = list(LeadEvent.objects.filter(lead=lead).order_by("occurred_at", "pk"))
    return {
        "thread": list(Message.objects.filter(lead=lead).select_related("sent_by__user").order_by("created_at", "pk")),
        "timeline": events,
        "first_touch": _first_touch_steps(events),
        "submissions": list(lead.submissions.order_by("received_at", "pk")),
        "followups": list(
            ScheduledJob.objects.filter(lead=lead, kind=ScheduledJob.Kind.FOLLOWUP).select_related("step__sequence").order_by("due_at")
        ),
        "crm_sync": ContactSync.objects.filter(contact_id=lead.contact_id).first(),
    }


# The first touch, step by step, from the timeline's `since_capture_ms`.
FIRST_TOUCH_STEPS = (
    ("event.published", "event published"),
    ("first_touch.started", "greeting task started"),
    ("greeting.composed", "greeting written"),
    ("message.accepted", "provider accepted"),
    ("message.sent", "sent"),
    ("message.delivered", "delivered"),
    ("message.read", "read"),
)


def _first_touch_steps(events: list[LeadEvent]) -> list[dict]:
    first = {}
    for event in events:
        first.setdefault(event.kind, event)
    steps = []
    for kind, label in FIRST_TOUCH_STEPS:
        event = first.get(kind)
        if event is not None and "since_capture_ms" in event.data:
            steps.append({"label": label, "ms": event.data["since_capture_ms"], "at": event.occurred_at})
    return steps
