"""Events: how a change in the database becomes a message every subscriber gets.

`emit()` is the one way to raise an event from Python. It writes an outbox row
inside the caller's transaction and asks PostgreSQL to wake the relay when that
transaction commits (NOTIFY is transactional: delivered on commit, dropped on
rollback). The HTTP request never talks to RabbitMQ; the relay
(`manage.py outbox_relay`) publishes the row with a publisher confirm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import connection

if TYPE_CHECKING:
    from swiftex.models import OutboxEvent

# The LISTEN/NOTIFY channel the relay waits on. SQL that writes outbox rows
# directly (leads/ingest_sql.py) notifies it too.
OUTBOX_CHANNEL = "swiftex_outbox"


def emit(event_type: str, *, organization_id: int | None, data: dict) -> OutboxEvent:
    # Imported here: this package is loaded by the Celery app before Django's apps are ready.
    from swiftex.models import OutboxEvent

    event = OutboxEvent.objects.create(event_type=event_type, organization_id=organization_id, payload=data)
    wake_relay()
    return event


def wake_relay() -> None:
    """Wake the relay as soon as the current transaction commits."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [OUTBOX_CHANNEL])


def lead_ids_of(payloads) -> set[int]:
    """The leads some events' data name: `lead_id`, or a `lead_ids` list (batch events)."""
    ids: set[int] = set()
    for data in payloads:
        if _is_id(data.get("lead_id")):
            ids.add(data["lead_id"])
        listed = data.get("lead_ids")
        if isinstance(listed, list):
            ids.update(lead_id for lead_id in listed if _is_id(lead_id))
    return ids


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
