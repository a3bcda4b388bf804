"""Conversations' event subscriber: turns `lead.created` into first-touch tasks.

Runs in the first-touch worker's consumer loop, so it only enqueues; the work
runs in that lane's pool with Celery's retry and time-limit machinery.
"""

from __future__ import annotations

from conversations.tasks import first_touch
from swiftex.events.consumer import MalformedEvent


def handle_events(events: list[dict]) -> None:
    created = [event for event in events if event["type"] == "lead.created"]
    for event in created:  # validate all before enqueueing any
        if not isinstance(event["data"].get("lead_id"), int):
            raise MalformedEvent(event["id"], "lead.created without an integer lead_id")
    for event in created:
        first_touch.apply_async(kwargs={"event_id": event["id"], "lead_id": event["data"]["lead_id"]})
