"""What `GET /metrics` answers: every process's counters plus gauges read now.

With `PROMETHEUS_MULTIPROC_DIR` (every process of a `make up` host), each
scrape builds a registry that merges the files of all processes (web
workers, lanes, relay, scheduler; a dead process's counters stay until the
directory is wiped) and adds the scrape-time collectors. Without it (tests,
a shell) they are registered once in the default in-process registry.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from conversations.metrics import ScheduledJobCollector
from crmsync.metrics import CrmSyncCollector
from swiftex.saturation import BrokerCollector, OutboxCollector, RedisCollector

logger = logging.getLogger(__name__)


class _Guarded:
    """A scrape-time collector whose failure (PostgreSQL down) drops only its own samples:
    the counters are most wanted when something is broken."""

    def __init__(self, collector) -> None:
        self.collector = collector

    def describe(self):
        return self.collector.describe()

    def collect(self):
        try:
            return list(self.collector.collect())
        except Exception as exc:  # noqa: BLE001 - reported, never a failed scrape
            logger.warning("metrics: %s failed (%s)", type(self.collector).__name__, type(exc).__name__)
            return []


_collectors = [
    _Guarded(collector)
    for collector in (OutboxCollector(), ScheduledJobCollector(), CrmSyncCollector(), BrokerCollector(), RedisCollector())
]
_multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
if not _multiprocess:
    for _collector in _collectors:
        REGISTRY.register(_collector)


def render() -> bytes:
    if not _multiprocess:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    for collector in _collectors:
        registry.register(collector)
    return generate_latest(registry)
