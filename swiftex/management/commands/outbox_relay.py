"""The outbox relay: publishes every committed outbox row to RabbitMQ.

It LISTENs on the `swiftex_outbox` channel, so a commit that wrote outbox rows
wakes it within a millisecond or two, and it also sweeps every
OUTBOX_RELAY_SWEEP_SECONDS for rows a missed wake-up left behind (relay
restarted, listener reconnecting). Each wake-up drains the whole backlog in
batches. Broker or database trouble: back off exponentially, retry, never
drop a row. Several relays may run at once (rows are claimed with SKIP LOCKED).
"""

from __future__ import annotations

import logging
import signal
import time

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from swiftex.db import connect_params
from swiftex.events import OUTBOX_CHANNEL
from swiftex.events.publisher import BrokerPublisher, publish_pending
from swiftex.heap import freeze_startup_objects

logger = logging.getLogger("swiftex.relay")

MAX_BACKOFF_SECONDS = 10.0


class Command(BaseCommand):
    help = "Publish outbox rows to RabbitMQ until stopped (SIGTERM/SIGINT stop it cleanly)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Drain the backlog once and exit.")

    def handle(self, *args, once: bool = False, **options):
        self._running = True
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        publisher = BrokerPublisher()
        listener: psycopg.Connection | None = None
        backoff = 0.0
        if not once:  # a long-running relay, not a one-off drain inside another process
            freeze_startup_objects("outbox relay")
        logger.info("outbox relay started")
        while self._running:
            try:
                if listener is None and not once:
                    listener = psycopg.connect(autocommit=True, **connect_params())
                    listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
                self._drain(publisher)
                backoff = 0.0
                if once:
                    break
                self._wait_for_commits(listener)
            except Exception as exc:  # noqa: BLE001 - broker or database down: wait and retry
                close_old_connections()
                if listener is not None:
                    listener.close()
                    listener = None
                backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF_SECONDS)
                logger.warning("outbox relay: %s: %s; retrying in %.1fs", type(exc).__name__, exc, backoff)
                if once:
                    raise
                self._sleep(backoff)
        if listener is not None:
            listener.close()
        publisher.close()
        logger.info("outbox relay stopped")

    def _wait_for_commits(self, listener: psycopg.Connection) -> None:
        """Return at the first wake-up (or after the sweep interval), then a short pause.

        The pause lets the next few commits land so one transaction publishes
        them all. Wake-ups queued meanwhile are discarded: the drain that
        follows covers every committed row, so each needs no drain of its own.
        """
        woken = any(True for _ in listener.notifies(timeout=settings.OUTBOX_RELAY_SWEEP_SECONDS, stop_after=1))
        if woken:
            time.sleep(settings.OUTBOX_RELAY_GATHER_SECONDS)
            for _ in listener.notifies(timeout=0.001):
                pass

    def _drain(self, publisher: BrokerPublisher) -> None:
        while self._running and publish_pending(publisher) >= settings.OUTBOX_BATCH_SIZE:
            pass

    def _stop(self, signum, frame):
        self._running = False

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._running and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))
