"""Saturation gauges, read at scrape time: true whichever process answers /metrics.

Outbox backlog from PostgreSQL; depth and consumers of every queue from
RabbitMQ (a passive declare per queue over one short-lived AMQP connection);
whether Redis answers. Every outside call has a timeout of about a second and
a failure becomes a `*_up 0` sample, never a failed or hanging scrape.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from kombu import Connection
from prometheus_client.core import GaugeMetricFamily

from swiftex import redis as swx_redis
from swiftex.events.topology import DEAD_LETTER_QUEUE, subscriber_queue

logger = logging.getLogger(__name__)

# A scrape (every 15 s or so) waits at most this long on each step of talking to RabbitMQ.
BROKER_TIMEOUT_SECONDS = 1.0


class OutboxCollector:
    """Outbox backlog and the age of its oldest unpublished row."""

    BACKLOG = ("swiftex_outbox_backlog", "Outbox rows not yet confirmed by RabbitMQ.")
    OLDEST = ("swiftex_outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished outbox row.")

    def describe(self):
        # Lets the registry learn the names without querying the database at import.
        yield GaugeMetricFamily(*self.BACKLOG)
        yield GaugeMetricFamily(*self.OLDEST)

    def collect(self):
        from swiftex.models import OutboxEvent

        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) "
                f"FROM {OutboxEvent._meta.db_table} WHERE published_at IS NULL"
            )
            backlog, oldest_age = cursor.fetchone()
        yield GaugeMetricFamily(*self.BACKLOG, value=backlog)
        yield GaugeMetricFamily(*self.OLDEST, value=float(oldest_age))


def queue_names() -> list[str]:
    """Every queue Swiftex consumes: the lanes', the subscribers' and the dead letters."""
    lanes = [lane["queue"] for lane in settings.SWIFTEX_LANES.values()]
    return [*lanes, *(subscriber_queue(name).name for name in settings.SWIFTEX_SUBSCRIBERS), DEAD_LETTER_QUEUE.name]


def read_queues(names: list[str]) -> dict[str, tuple[int, int]] | None:
    """{queue: (messages ready, consumers)} for the queues that exist; None if RabbitMQ did not answer."""
    depths = {}
    try:
        with Connection(
            settings.CELERY_BROKER_URL, connect_timeout=BROKER_TIMEOUT_SECONDS,
            transport_options={"read_timeout": BROKER_TIMEOUT_SECONDS, "write_timeout": BROKER_TIMEOUT_SECONDS},
        ) as conn:
            conn.ensure_connection(max_retries=0)  # one attempt: kombu's default retries would wait seconds
            channel = conn.channel()
            for name in names:
                try:
                    _, ready, consumers = channel.queue_declare(queue=name, passive=True)
                except conn.channel_errors:  # not declared yet (no worker ever started): no sample
                    channel = conn.channel()  # the broker closed the channel with the 404
                    continue
                depths[name] = (ready, consumers)
    except Exception as exc:  # noqa: BLE001 - a scrape reports the broker down, it never fails
        if _broker_was_up[0]:  # once per outage, not at every scrape
            # The type only: the URL carries the broker's password.
            logger.warning("metrics: RabbitMQ unreachable (%s)", type(exc).__name__)
        _broker_was_up[0] = False
        return None
    _broker_was_up[0] = True
    return depths


_broker_was_up = [True]


class BrokerCollector:
    UP = ("swiftex_broker_up", "1 if RabbitMQ answered this scrape; 0, with no queue samples, if not.")
    READY = ("swiftex_queue_messages_ready", "Messages waiting in a queue for a consumer (RabbitMQ's ready count).")
    CONSUMERS = ("swiftex_queue_consumers", "Consumers attached to a queue; 0 means nothing drains it.")

    def describe(self):
        yield GaugeMetricFamily(*self.UP)
        yield GaugeMetricFamily(*self.READY, labels=["queue"])
        yield GaugeMetricFamily(*self.CONSUMERS, labels=["queue"])

    def collect(self):
        depths = read_queues(queue_names())
        yield GaugeMetricFamily(*self.UP, value=0 if depths is None else 1)
        ready = GaugeMetricFamily(*self.READY, labels=["queue"])
        consumers = GaugeMetricFamily(*self.CONSUMERS, labels=["queue"])
        for name, (messages, attached) in (depths or {}).items():
            ready.add_metric([name], messages)
            consumers.add_metric([name], attached)
        yield ready
        yield consumers


class RedisCollector:
    UP = ("swiftex_redis_up", "1 if Redis answered a ping (socket timeout REDIS_SOCKET_TIMEOUT); 0 if not or its breaker is open.")

    def describe(self):
        yield GaugeMetricFamily(*self.UP)

    def collect(self):
        yield GaugeMetricFamily(*self.UP, value=1 if swx_redis.available() else 0)
