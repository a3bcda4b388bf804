"""The outbox relay: re-publishes every event the fast path did not get confirmed."""

from __future__ import annotations

import logging
import signal
import time
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from swiftex.events.publisher import BrokerPublisher, publish_pending

logger = logging.getLogger("swiftex.relay")

MAX_BACKOFF_SECONDS = 10.0


class Command(BaseCommand):
    help = "Publish unconfirmed outbox rows to RabbitMQ until stopped (SIGTERM/SIGINT stop it cleanly)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Drain the backlog once and exit.")

    def handle(self, *args, once: bool = False, **options):
        self._running = True
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        publisher = BrokerPublisher()
        grace = timedelta(seconds=settings.OUTBOX_RELAY_GRACE_SECONDS)
        backoff = settings.OUTBOX_RELAY_INTERVAL_SECONDS
        logger.info("outbox relay started (grace %ss)", settings.OUTBOX_RELAY_GRACE_SECONDS)
        while self._running:
            try:
                count = publish_pending(publisher, older_than=None if once else grace)
            except Exception as exc:  # noqa: BLE001 - broker or database down: wait and retry
                close_old_connections()
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                logger.warning("outbox relay: %s: %s; retrying in %.1fs", type(exc).__name__, exc, backoff)
                self._sleep(backoff)
                continue
            backoff = settings.OUTBOX_RELAY_INTERVAL_SECONDS
            if count:
                logger.info("outbox relay published %d events", count)
            if count >= settings.OUTBOX_BATCH_SIZE:
                continue  # more backlog: no sleep
            if once:
                break
            self._sleep(settings.OUTBOX_RELAY_INTERVAL_SECONDS)
        publisher.close()
        logger.info("outbox relay stopped")

    def _stop(self, signum, frame):
        self._running = False

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._running and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))
