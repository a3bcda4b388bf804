"""Publishing outbox rows to RabbitMQ with publisher confirms.

`publish_pending()` claims unpublished rows with `SELECT … FOR UPDATE SKIP
LOCKED` (so any number of relays can run at once without publishing a row
concurrently), publishes each, and marks a row published only after RabbitMQ
confirmed it. The relay (`manage.py outbox_relay`) calls it whenever a commit
wakes it, and on a short sweep interval in case a wake-up was missed.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from kombu import Connection, Producer

from swiftex.events.topology import declare_all, events_exchange
from swiftex.models import OutboxEvent

logger = logging.getLogger(__name__)

PUBLISH_CONFIRM_TIMEOUT = 5.0


class BrokerPublisher:
    """One confirmed-publish connection, opened lazily and dropped on any error."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url or settings.CELERY_BROKER_URL
        self._connection: Connection | None = None
        self._producer: Producer | None = None

    def _get_producer(self) -> Producer:
        if self._producer is None:
            conn = Connection(
                self._url,
                connect_timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT,
                transport_options={"confirm_publish": True},
            )
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            declare_all(channel)
            self._connection = conn
            self._producer = Producer(channel, exchange=events_exchange(), serializer="json")
        return self._producer

    def publish(self, event: OutboxEvent) -> None:
        try:
            self._get_producer().publish(
                # When it left the outbox: subscribers show it on the lead's timeline.
                {**event.message(), "published_at": timezone.now().isoformat()},
                routing_key=event.event_type,
                delivery_mode=2,  # persistent: survives a broker restart
                message_id=str(event.event_id),
                retry=False,
                timeout=PUBLISH_CONFIRM_TIMEOUT,
            )
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass
        self._connection = None
        self._producer = None


def publish_pending(publisher: BrokerPublisher, *, limit: int | None = None) -> int:
    """Publish unpublished outbox rows; return how many were confirmed.

    Rows confirmed before a failure are still marked published, so a broker
    that drops mid-batch causes no re-publish of what it already has.
    """
    limit = limit or settings.OUTBOX_BATCH_SIZE
    confirmed: list[int] = []
    error: Exception | None = None
    with transaction.atomic():
        rows = OutboxEvent.objects.select_for_update(skip_locked=True).filter(published_at__isnull=True)
        rows = list(rows.order_by("pk")[:limit])
        for row in rows:
            try:
                publisher.publish(row)
            except Exception as exc:  # noqa: BLE001 - recorded on the row, then re-raised
                error = exc
                OutboxEvent.objects.filter(pk=row.pk).update(
                    attempts=F("attempts") + 1, last_error=f"{type(exc).__name__}: {exc}"[:500]
                )
                break
            confirmed.append(row.pk)
        if confirmed:
            OutboxEvent.objects.filter(pk__in=confirmed).update(published_at=timezone.now(), attempts=F("attempts") + 1)
    if error is not None:
        raise error
    return len(confirmed)
