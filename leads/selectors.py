"""Reads for leads."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Exists, OuterRef, Q

from leads.models import Lead, Organization, Submission
from swiftex.ttlcache import TTLCache

_organizations: TTLCache[Organization | None] = TTLCache(lambda: settings.ORGANIZATION_CACHE_SECONDS)
_by_whatsapp_number: TTLCache[Organization | None] = TTLCache(lambda: settings.ORGANIZATION_CACHE_SECONDS)


def organization(org_id: int) -> Organization | None:
    """The organization, cached for ORGANIZATION_CACHE_SECONDS (admin edits apply within that)."""
    return _organizations.get(org_id, lambda: Organization.objects.filter(pk=org_id).first())


def organization_for_whatsapp_number(phone_number_id: str) -> Organization | None:
    """The tenant a WhatsApp webhook is for (`metadata.phone_number_id`), cached likewise."""
    return _by_whatsapp_number.get(
        phone_number_id, lambda: Organization.objects.filter(whatsapp_phone_number_id=phone_number_id).order_by("pk").first()
    )


# What a partner's key sees of a lead's timeline: its capture and how fast it was answered;
# not who owns it, what the person wrote, or what reps did.
PARTNER_TIMELINE = (
    "lead.created", "submission.received", "event.published", "first_touch.started", "first_touch.skipped",
    "greeting.composed", "greeting.fallback", "message.accepted", "message.sent", "message.delivered", "message.read",
    "message.failed",
)


def lead_detail(*, org: Organization, lead_id: int, source: str | None = None) -> dict | None:
    """The lead as the API shows it. With `source` (a partner's key pinned to one), only a lead
    that source submitted, and only that source's submissions: partners of one organization
    never read each other's leads."""
    leads = Lead.objects.select_related("contact").filter(organization=org, pk=lead_id)
    if source is not None:
        leads = leads.filter(Exists(Submission.objects.filter(lead=OuterRef("pk"), source=source)))
    lead = leads.first()
    if lead is None:
        return None
    # A partner sees what it sent and how the lead was answered, not what another partner or
    # the organization added: the same person may have come through several of them.
    submissions = list((lead.submissions.filter(source=source) if source is not None else lead.submissions.all())
                       .order_by("received_at", "pk"))
    events = lead.events.all()
    contact = lead.contact
    detail = {
        "id": lead.pk,
        "status": lead.status,
        "source": lead.source,
        "campaign": lead.campaign,
        "captured_at": lead.captured_at,
        "first_response_at": lead.first_response_at,
        "closed_at": lead.closed_at,
        "contact": {"id": contact.pk, "name": contact.name, "phone": contact.phone, "email": contact.email, "consent": contact.consent},
    }
    if source is not None:
        events = events.filter(kind__in=PARTNER_TIMELINE).exclude(Q(data__has_key="source") & ~Q(data__source=source))
        detail["source"], detail["campaign"] = source, submissions[0].campaign if submissions else ""
        sent = {field for s in submissions if isinstance(s.payload, dict) for field in ("name", "phone", "email") if s.payload.get(field)}
        detail["contact"] = {key: value for key, value in detail["contact"].items() if key not in ("name", "phone", "email") or key in sent}
    return {
        **detail,
        "submissions": [
            {
                "id": s.pk,
                "source": s.source,
                "campaign": s.campaign,
                "external_id": s.external_id,
                "message": s.message,
                "received_at": s.received_at,
                "opened_lead": s.opened_lead,
            }
            for s in submissions
        ],
        "greeting": _greeting(lead),
        **({} if source is not None else {"crm_sync": _crm_sync(lead), "assignment": _assignment(lead)}),
        "messages": [] if source is not None else [
            {
                "id": m.pk,
                "direction": m.direction,
                "channel": m.channel,
                "status": m.status,
                "body": m.body,
                "template_name": m.template_name,
                "error_code": m.error_code,
                "error_title": m.error_title,
                "created_at": m.created_at,
                "accepted_at": m.accepted_at,
                "delivered_at": m.delivered_at,
                "read_at": m.read_at,
            }
            for m in lead.messages.order_by("created_at", "pk")
        ],
        "timeline": [
            {"kind": e.kind, "occurred_at": e.occurred_at, "data": e.data}
            for e in events.order_by("occurred_at", "pk")
        ],
    }


def _greeting(lead: Lead) -> dict | None:
    from conversations.models import Greeting  # conversations builds on leads, not the reverse

    greeting = Greeting.objects.filter(lead=lead).first()
    if greeting is None:
        return None
    return {"state": greeting.state, "reason": greeting.reason, "text_source": greeting.text_source, "model_ms": greeting.model_ms}


def _crm_sync(lead: Lead) -> dict | None:
    from crmsync.models import ContactSync  # crmsync builds on leads, not the reverse

    sync = ContactSync.objects.filter(contact_id=lead.contact_id).first()
    if sync is None:
        return None
    return {"state": sync.state, "crm": sync.adapter, "crm_id": sync.crm_id, "last_error": sync.last_error,
            "synced_at": sync.synced_at}


def _assignment(lead: Lead) -> dict | None:
    from routing.models import Assignment  # routing builds on leads, not the reverse

    assignment = Assignment.objects.select_related("rep__user", "team").filter(lead=lead).first()
    if assignment is None:
        return None
    return {"rep": str(assignment.rep) if assignment.rep else None, "team": assignment.team.name if assignment.team else None,
            "assigned_at": assignment.assigned_at, "acted_at": assignment.acted_at}
