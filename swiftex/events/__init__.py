"""Events: how a change in the database becomes a message every subscriber gets.

`emit()` is the one way to raise an event. It writes an outbox row inside the
caller's transaction and, after commit, hands the row to the in-process fast
path. The HTTP request never talks to RabbitMQ; the relay (`manage.py
outbox_relay`) re-publishes anything the fast path did not get confirmed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction

if TYPE_CHECKING:
    from swiftex.models import OutboxEvent


def emit(event_type: str, *, organization_id: int | None, data: dict) -> OutboxEvent:
    # Imported here: this package is loaded by the Celery app before Django's apps are ready.
    from swiftex.models import OutboxEvent

    event = OutboxEvent.objects.create(event_type=event_type, organization_id=organization_id, payload=data)
    publish_after_commit(event.pk)
    return event


def publish_after_commit(outbox_id: int) -> None:
    """Hand an outbox row to the fast path once its transaction commits.

    For code that writes outbox rows in SQL (leads/ingest_sql.py) rather than
    through `emit()`.
    """
    from swiftex.events.publisher import fast_path

    transaction.on_commit(lambda: fast_path.submit(outbox_id))
