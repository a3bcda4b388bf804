"""analytics event subscriber.

For now it records each event it receives in the processed-event ledger, one
statement per batch, so delivery to this subscriber is observable and
idempotent; the analytics work itself builds on this hook.
"""

from __future__ import annotations

from swiftex.events.idempotency import record_processed

CONSUMER = "analytics"


def handle_events(events: list[dict]) -> None:
    record_processed(CONSUMER, [event["id"] for event in events])
