"""analytics event subscriber.

For now it records each event it receives in the processed-event ledger, so
delivery to this subscriber is observable and idempotent; the analytics work
itself builds on this hook.
"""

from __future__ import annotations

from swiftex.events.idempotency import handle_once

CONSUMER = "analytics"


def handle_event(event: dict) -> None:
    handle_once(CONSUMER, event["id"], lambda: None)
