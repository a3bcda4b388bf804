"""Consuming subscriber queues inside a lane's Celery worker.

A worker started with `--subscribers analytics,crmsync` also consumes
`analytics.events` and `crmsync.events`. A subscriber's events reach its
handler in one of two ways:

- in batches (the default): messages are gathered and handed over as one
  list (at most BATCH_SIZE, at least every `flush_seconds`), so a burst of
  5,000 events costs a few dozen database statements, not 5,000. The handler
  runs in the worker's consumer loop and must be quick: record, or enqueue a
  task, and return;
- one by one in the lane's worker pool (`in_pool`), for work that must start
  the moment its event arrives: the first touch. No batch window, and no
  second trip through RabbitMQ as a task message.

Either way a message is acked only after its handler returned: a worker
killed in between gets it redelivered, and handlers are idempotent (the
processed-event ledger, the greeting's claim). A malformed event is
dead-lettered alone. A failing batch is run again one event at a time:
what works is acked, and an event that keeps failing alone while the others
succeed is dead-lettered (MAX_STRIKES), so one event naming a deleted row
cannot stop a subscriber for every tenant; if every event fails (an outage),
the batch is retried with backoff without spinning the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

import psycopg
from celery import bootsteps
from celery.concurrency.thread import TaskPool as ThreadPool
from django.db import InterfaceError, OperationalError, close_old_connections
from kombu import Consumer, Message
from kombu.common import ignore_errors

logger = logging.getLogger(__name__)

BATCH_SIZE = 100
FLUSH_INTERVAL = 0.05
MAX_BACKOFF = 10.0
# An event that fails alone this many times while the events around it succeed is
# dead-lettered: it is the event (a row it names was deleted, say), not the database.
MAX_STRIKES = 3
# A batch that fails with these is an outage, not a bad event: no one-by-one run.
OUTAGE_ERRORS = (OperationalError, InterfaceError, psycopg.OperationalError, ConnectionError, TimeoutError)
# One-by-one runs that may fail before one succeeds; past that it is an outage.
ISOLATION_PROBES = 3
REQUEUE_DELAY = 1.0  # a pool handler that failed waits this long before its event goes back
DRAIN_SECONDS = 15.0  # how long a stopping worker lets pool handlers finish (gunicorn's graceful_timeout is 20)


class MalformedEvent(ValueError):
    """An event that can never be handled: dead-lettered, not retried."""

    def __init__(self, event_id: object, reason: str) -> None:
        super().__init__(f"event {event_id}: {reason}")
        self.event_id = event_id


def validate_event(body: object) -> dict:
    if not isinstance(body, dict):
        raise MalformedEvent(None, f"body must be a JSON object, got {type(body).__name__}")
    missing = [key for key in ("id", "type", "data") if key not in body]
    if missing:
        raise MalformedEvent(body.get("id"), f"missing {', '.join(missing)}")
    if not isinstance(body["data"], dict):
        raise MalformedEvent(body["id"], "data must be a JSON object")
    return body


class Batcher:
    """Buffers one subscriber's messages and flushes them to its handler."""

    def __init__(self, name: str, handler: Callable[[list[dict]], None], flush_seconds: float = FLUSH_INTERVAL) -> None:
        self.name = name
        self.handler = handler
        self.flush_seconds = flush_seconds
        self.pending: list[tuple[dict, Message]] = []
        self.oldest_at = 0.0
        self.failures = 0
        self.retry_at = 0.0
        self.strikes: dict[object, int] = {}

    def add(self, body: object, message: Message) -> None:
        try:
            event = validate_event(body)
        except MalformedEvent as exc:
            dead_letter(self.name, message, exc)
            return
        if not self.pending:
            self.oldest_at = time.monotonic()
        self.pending.append((event, message))
        if len(self.pending) >= BATCH_SIZE:
            self.flush()

    def flush_if_due(self) -> None:
        if self.pending and time.monotonic() - self.oldest_at >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.pending or time.monotonic() < self.retry_at:
            return
        batch, self.pending = self.pending, []
        while batch:
            try:
                self._handle([event for event, _ in batch])
            except MalformedEvent as exc:
                bad = [item for item in batch if item[0]["id"] == exc.event_id] or batch[:1]
                for _, message in bad:
                    dead_letter(self.name, message, exc)
                batch = [item for item in batch if item not in bad]
                continue
            except Exception as exc:
                logger.exception("%s: batch of %d events failed", self.name, len(batch))
                if len(batch) > 1 and not isinstance(exc, OUTAGE_ERRORS):
                    batch = self._isolate(batch)
                    if not batch:
                        self.failures = 0
                        return
                self.failures += 1
                delay = min(MAX_BACKOFF, 0.1 * 2**self.failures)
                logger.warning("%s: %d events retried in %.1fs", self.name, len(batch), delay)
                self.retry_at = time.monotonic() + delay
                self.pending = batch + self.pending
                return
            for _, message in batch:
                message.ack()
            self.failures = 0
            return

    def _handle(self, events: list[dict]) -> None:
        # This runs on the consumer's own thread, which no task or request ever resets: a
        # connection broken by a database restart must be replaced here, or every batch fails.
        close_old_connections()
        try:
            self.handler(events)
        finally:
            close_old_connections()

    def _isolate(self, batch: list[tuple[dict, Message]]) -> list[tuple[dict, Message]]:
        """Run a failed batch's events one by one, acking those that work; returns the rest.

        So one bad event cannot hold back the queue behind it: if others succeed meanwhile
        (the database is fine), it gets a strike, and at MAX_STRIKES it is dead-lettered.
        If all fail, it is an outage: no strikes, the batch backs off and waits.
        """
        failed: list[tuple[dict, Message, Exception]] = []
        succeeded = False
        for index, (event, message) in enumerate(batch):
            if not succeeded and len(failed) >= ISOLATION_PROBES:
                # Nothing works alone either: an outage after all. Stop here (this runs on the
                # consumer's loop, and each call may wait out a connection timeout), and put
                # these last, so bad events at the head cannot hide the good ones for ever.
                return batch[index:] + [(e, m) for e, m, _ in failed]
            try:
                self._handle([event])
            except MalformedEvent as exc:
                dead_letter(self.name, message, exc)
                continue
            except Exception as exc:
                failed.append((event, message, exc))
                continue
            message.ack()
            self.strikes.pop(event["id"], None)
            succeeded = True
        kept = []
        for event, message, exc in failed:
            if succeeded:
                self.strikes[event["id"]] = self.strikes.get(event["id"], 0) + 1
                if self.strikes[event["id"]] >= MAX_STRIKES:
                    del self.strikes[event["id"]]
                    dead_letter(self.name, message, exc)
                    continue
            kept.append((event, message))
        return kept

    def drop(self) -> None:
        """The channel is gone: unacked messages will be redelivered by the broker."""
        self.pending = []


def dead_letter(name: str, message: Message, exc: Exception) -> None:
    logger.error("%s: dead-lettering message %s: %s", name, message.properties.get("message_id"), exc)
    message.reject(requeue=False)


_NOT_FINISHED = RuntimeError("the handler did not finish")


def _ignore(result: object) -> None:
    """Celery's pool calls a callback with the handler's return value; there is none to use."""


class PoolRunner:
    """Runs each of one subscriber's events in the lane's worker pool as it arrives.

    The pool thread only reports the outcome; acks and rejects happen on the
    consumer's own thread (`flush_if_due`, on the loop's tick), because an AMQP
    channel is not shared between threads. A handler that raises something
    other than MalformedEvent has its event requeued after REQUEUE_DELAY, so a
    broken dependency costs a retry a second, not a hot loop.
    """

    flush_seconds = FLUSH_INTERVAL  # how often outcomes are acked; not on the greeting's path

    def __init__(self, name: str, handler: Callable[[dict], None], pool) -> None:
        self.name = name
        self.handler = handler
        self.pool = pool
        self.outcomes: deque[tuple[Message, Exception | None]] = deque()
        self.in_flight = 0
        self._lock = threading.Lock()

    def add(self, body: object, message: Message) -> None:
        try:
            event = validate_event(body)
        except MalformedEvent as exc:
            dead_letter(self.name, message, exc)
            return
        with self._lock:
            self.in_flight += 1
        try:
            self.pool.apply_async(self._run, (event, message), callback=_ignore)
        except BaseException:
            with self._lock:
                self.in_flight -= 1
            raise

    def _run(self, event: dict, message: Message) -> None:
        # Requeue unless the handler is seen to finish: whatever ends it otherwise (a
        # BaseException, a shutdown) must not ack an event whose work was not done.
        outcome: Exception | None = _NOT_FINISHED
        try:
            close_old_connections()  # as Django does around a request, Celery around a task
            self.handler(event)
            close_old_connections()
            outcome = None
            logger.info("%s: %s %s handled", self.name, event["type"], event["id"])
        except MalformedEvent as exc:
            outcome = exc
        except Exception as exc:
            logger.exception("%s: %s %s failed; requeued in %.0fs", self.name, event["type"], event["id"], REQUEUE_DELAY)
            time.sleep(REQUEUE_DELAY)
            outcome = exc
        finally:
            self.outcomes.append((message, outcome))
            with self._lock:
                self.in_flight -= 1

    def flush_if_due(self) -> None:
        while self.outcomes:
            message, outcome = self.outcomes.popleft()
            if outcome is None:
                message.ack()
            elif isinstance(outcome, MalformedEvent):
                dead_letter(self.name, message, outcome)
            else:
                message.reject(requeue=True)

    def drain(self, timeout: float) -> None:
        """Let running handlers finish (a deploy), acking them, for at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
            self.flush_if_due()
        self.flush_if_due()

    def drop(self) -> None:
        """The channel is gone: whatever was not acked is redelivered by the broker."""
        self.outcomes.clear()


class EventConsumerStep(bootsteps.ConsumerStep):
    def __init__(self, parent, subscribers: str = "", **kwargs) -> None:
        self.subscriber_names = [name.strip() for name in (subscribers or "").split(",") if name.strip()]
        self.batchers: list[Batcher | PoolRunner] = []
        self.pool = None
        self._tick = None
        super().__init__(parent, **kwargs)

    def get_consumers(self, channel):
        from swiftex.events.topology import declare_all, get_subscriber

        if not self.subscriber_names:
            return []
        declare_all(channel)
        self.batchers = []
        consumers = []
        for name in self.subscriber_names:
            subscriber = get_subscriber(name)
            if subscriber.in_pool:
                if not isinstance(self.pool, ThreadPool):
                    raise ValueError(f"event subscriber {name!r} runs in the lane's pool, which must be --pool threads")
                batcher = PoolRunner(name, subscriber.handler, self.pool)
                # No more events taken than the pool can run: the rest stay in RabbitMQ for
                # another worker instead of waiting unseen in this one's queue.
                prefetch = self.pool.limit
            else:
                batcher = Batcher(name, subscriber.handler, subscriber.flush_seconds)
                prefetch = BATCH_SIZE * 2
            self.batchers.append(batcher)
            consumers.append(Consumer(channel, queues=[subscriber.queue], callbacks=[batcher.add], accept=["json"], prefetch_count=prefetch))
        logger.info("consuming event queues for: %s", ", ".join(self.subscriber_names))
        return consumers

    def start(self, c) -> None:
        self.pool = c.pool
        super().start(c)
        if self.batchers and c.hub is not None:
            # Runs in the consumer's own loop, so acks stay on the consumer thread. Registered
            # at every start: when the connection is lost, Celery cancels the timer entries
            # added since it connected, this one included, and starts the steps again.
            self._cancel_tick()
            self._tick = c.hub.call_repeatedly(min(b.flush_seconds for b in self.batchers), self._flush_all)

    def _cancel_tick(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def _flush_all(self) -> None:
        for batcher in self.batchers:
            batcher.flush_if_due()

    def stop(self, c) -> None:
        # A warm shutdown (the connection is still there): stop taking events and
        # let the pool's handlers under way finish and be acked. After a lost
        # connection Celery has already dropped it. Anything not acked (buffered,
        # unfinished) the broker redelivers.
        if c.connection is not None:
            for consumer in self.consumers or []:
                ignore_errors(c.connection, consumer.cancel)
            for batcher in self.batchers:
                if isinstance(batcher, PoolRunner):
                    ignore_errors(c.connection, batcher.drain, DRAIN_SECONDS)
        self._cancel_tick()
        for batcher in self.batchers:
            batcher.drop()
        super().stop(c)
