"""Conversations' event subscriber: turns events into first-touch work.

Runs in the first-touch worker's consumer loop, so it only enqueues.
"""

from __future__ import annotations

from conversations.tasks import first_touch
from swiftex.events.consumer import MalformedEvent


def handle_event(event: dict) -> None:
    if event["type"] != "lead.created":
        return
    lead_id = event["data"].get("lead_id")
    if not isinstance(lead_id, int):
        raise MalformedEvent("lead.created without an integer lead_id")
    first_touch.apply_async(kwargs={"event_id": event["id"], "lead_id": lead_id})
