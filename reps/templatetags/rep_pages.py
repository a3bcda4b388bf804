"""Template filters for the rep pages: timeline entries in words."""

from __future__ import annotations

from django import template

register = template.Library()

LABELS = {
    "lead.created": "Lead captured",
    "submission.received": "Form submitted",
    "event.published": "Event published",
    "first_touch.started": "Greeting started",
    "first_touch.skipped": "Greeting skipped",
    "greeting.composed": "Greeting written",
    "greeting.fallback": "Greeting fell back",
    "message.written": "Message written by a rep",
    "message.accepted": "Message accepted by provider",
    "message.sent": "Message sent",
    "message.delivered": "Message delivered",
    "message.read": "Message read",
    "message.failed": "Message failed",
    "message.retrying": "Message retrying",
    "message.outcome_unknown": "Message outcome unknown",
    "message.received": "Lead wrote",
    "message.reaction": "Lead reacted",
    "message.unsupported": "Lead sent something WhatsApp cannot show",
    "reply.started": "AI reply started",
    "reply.skipped": "AI reply skipped",
    "reply.failed": "AI reply failed",
    "consent.revoked": "Opted out",
    "followup.deferred": "Follow-up deferred",
    "followup.cancelled": "Follow-up cancelled",
    "followups.cancelled": "Follow-ups cancelled",
    "followup.sent": "Follow-up sent",
    "conversation.window_closed": "WhatsApp window closed",
    "lead.assigned": "Assigned",
    "lead.unassigned": "Not assigned",
    "lead.reassigned": "Reassigned",
    "lead.escalation_skipped": "Escalation skipped",
    "lead.status_changed": "Status changed",
    "lead.closed": "Lead closed",
    "crm.synced": "Synced to CRM",
    "crm.failed": "CRM sync failed",
    "crm.dead_lettered": "CRM sync gave up",
}
# Shown elsewhere on the page, or internal ids a rep has no use for.
HIDDEN_KEYS = {"since_capture_ms", "rep_id", "from_id", "to_id", "message_id", "submission_id", "callback_id", "event_id"}


@register.filter
def event_label(kind: str) -> str:
    return LABELS.get(kind, kind.replace(".", " ").replace("_", " ").capitalize())


@register.filter
def event_details(data: dict) -> list[tuple[str, str]]:
    """The entry's data as (name, value) pairs in words; nested maps flattened to "a: b; c: d"."""
    if not isinstance(data, dict):
        return []
    pairs = []
    for key, value in data.items():
        if key in HIDDEN_KEYS or value in (None, "", [], {}):
            continue
        if isinstance(value, dict):
            value = "; ".join(f"{k}: {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        pairs.append((key.replace("_", " "), str(value)))
    return pairs


@register.filter
def since_capture(data: dict) -> str:
    ms = data.get("since_capture_ms") if isinstance(data, dict) else None
    if ms is None:
        return ""
    ms = float(ms)
    return f"+{ms:,.0f} ms" if ms < 10_000 else f"+{ms / 1000:,.1f} s"
