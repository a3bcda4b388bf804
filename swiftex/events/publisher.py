"""Publishing outbox rows to RabbitMQ with publisher confirms.

Two callers share `publish_pending()`:
- the fast path: a daemon thread per process, fed row ids after commit, so a
  new lead's event is on the broker milliseconds after its transaction;
- the relay process, which sweeps up whatever the fast path did not get
  confirmed (broker down, process killed) after a short grace period.
Rows are claimed with `SELECT … FOR UPDATE SKIP LOCKED`, so both (and any number
of relays) can run at once without publishing the same row twice concurrently.
A row is marked published only after RabbitMQ confirmed it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection, transaction
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
                event.message(),
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


def publish_pending(
    publisher: BrokerPublisher,
    *,
    ids: list[int] | None = None,
    older_than: timedelta | None = None,
    limit: int | None = None,
) -> int:
    """Publish unpublished outbox rows; return how many were confirmed.

    Rows confirmed before a failure are still marked published, so a broker
    that drops mid-batch causes no re-publish of what it already has.
    """
    limit = limit or settings.OUTBOX_BATCH_SIZE
    confirmed: list[int] = []
    error: Exception | None = None
    with transaction.atomic():
        rows = OutboxEvent.objects.select_for_update(skip_locked=True).filter(published_at__isnull=True)
        if ids is not None:
            rows = rows.filter(pk__in=ids)
        if older_than is not None:
            rows = rows.filter(created_at__lte=timezone.now() - older_than)
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


class FastPath:
    """Publishes freshly committed outbox rows from a background thread.

    `submit()` never blocks and never raises: the request that wrote the row
    is already answered. When the broker is unreachable the fast path stands
    aside for a few seconds and leaves the rows to the relay.
    """

    PAUSE_AFTER_FAILURE = 5.0
    MAX_QUEUED = 20_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[int] = queue.Queue(self.MAX_QUEUED)
        self._paused_until = 0.0

    def submit(self, outbox_id: int) -> None:
        if not settings.OUTBOX_FAST_PATH or time.monotonic() < self._paused_until:
            return
        self._ensure_thread()
        try:
            self._queue.put_nowait(outbox_id)
        except queue.Full:
            pass  # the relay picks it up after the grace period

    def _ensure_thread(self) -> None:
        # After a fork (gunicorn, Celery prefork) the parent's thread is gone.
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._queue = queue.Queue(self.MAX_QUEUED)
                threading.Thread(target=self._run, name="outbox-fast-path", daemon=True).start()
                self._pid = os.getpid()

    def _run(self) -> None:
        publisher = BrokerPublisher()
        while True:
            ids = [self._queue.get()]
            while len(ids) < settings.OUTBOX_BATCH_SIZE:
                try:
                    ids.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                publish_pending(publisher, ids=ids, limit=len(ids))
            except Exception as exc:  # noqa: BLE001 - the relay is the safety net
                logger.warning("outbox fast path paused for %ss: %s: %s", self.PAUSE_AFTER_FAILURE, type(exc).__name__, exc)
                self._paused_until = time.monotonic() + self.PAUSE_AFTER_FAILURE
                self._drain()
                close_old_connections()
            finally:
                if self._queue.empty():
                    connection.close()  # back to the pool while idle

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


fast_path = FastPath()
