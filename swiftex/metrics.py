"""Prometheus metrics.

Counters and histograms live in each process; under gunicorn (several worker
processes) set `PROMETHEUS_MULTIPROC_DIR` and the scrape merges them. Backlog
gauges are read from PostgreSQL at scrape time, so they are true whichever
process answers.
"""

from __future__ import annotations

import os
import time

from django.db import connection
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

REQUEST_LATENCY = Histogram(
    "swiftex_http_request_duration_seconds",
    "HTTP request latency by route, method and status.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LEADS_INGESTED = Counter("swiftex_leads_ingested_total", "Lead submissions stored, by outcome.", ["outcome"])
INGEST_REJECTED = Counter("swiftex_ingest_rejected_total", "Lead submissions refused, by reason.", ["reason"])
WEBHOOKS = Counter("swiftex_webhooks_total", "Provider webhooks received, by provider and outcome.", ["provider", "outcome"])


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


def _database_collectors() -> list:
    from crmsync.metrics import CrmSyncCollector

    return [OutboxCollector(), CrmSyncCollector()]


_db_collectors = _database_collectors()
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    for _collector in _db_collectors:
        REGISTRY.register(_collector)


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        for collector in _db_collectors:
            registry.register(collector)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class RequestMetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match else "unmatched"
        REQUEST_LATENCY.labels(route=route, method=request.method, status=str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response
