"""crmsync event subscriber.

For now it records each event it receives in the processed-event ledger, so
delivery to this subscriber is observable and idempotent; the crmsync work
itself builds on this hook.
"""

from __future__ import annotations

from swiftex.events.idempotency import handle_once

CONSUMER = "crmsync"


def handle_event(event: dict) -> None:
    handle_once(CONSUMER, event["id"], lambda: None)
