"""Reads for leads."""

from __future__ import annotations

from leads.models import Lead, Organization


def lead_detail(*, org: Organization, lead_id: int) -> dict | None:
    lead = Lead.objects.select_related("contact").filter(organization=org, pk=lead_id).first()
    if lead is None:
        return None
    contact = lead.contact
    return {
        "id": lead.pk,
        "status": lead.status,
        "source": lead.source,
        "campaign": lead.campaign,
        "captured_at": lead.captured_at,
        "first_response_at": lead.first_response_at,
        "closed_at": lead.closed_at,
        "contact": {
            "id": contact.pk,
            "name": contact.name,
            "phone": contact.phone,
            "email": contact.email,
            "consent": contact.consent,
        },
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
            for s in lead.submissions.order_by("received_at", "pk")
        ],
        "timeline": [
            {"kind": e.kind, "occurred_at": e.occurred_at, "data": e.data}
            for e in lead.events.order_by("occurred_at", "pk")
        ],
    }
