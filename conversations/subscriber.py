"""Conversations' event subscriber: `lead.created` → greet; `message.failed` → SMS fallback.

Runs in the first-touch worker's consumer loop, so it only enqueues; the work
runs in that lane's pool with Celery's retry and time-limit machinery.
"""

from __future__ import annotations

from conversations.models import Channel
from conversations.tasks import first_touch, greeting_fallback
from swiftex.events.consumer import MalformedEvent


def handle_events(events: list[dict]) -> None:
    for event in events:  # validate all before enqueueing any
        if event["type"] == "lead.created" and not isinstance(event["data"].get("lead_id"), int):
            raise MalformedEvent(event["id"], "lead.created without an integer lead_id")
    for event in events:
        data = event["data"]
        if event["type"] == "lead.created":
            first_touch.apply_async(
                kwargs={"event_id": event["id"], "lead_id": data["lead_id"], "published_at": event.get("published_at")}
            )
        elif event["type"] == "message.failed" and data.get("channel") == Channel.WHATSAPP and isinstance(data.get("greeting_id"), int):
            greeting_fallback.apply_async(kwargs={"greeting_id": data["greeting_id"]})
