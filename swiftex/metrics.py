"""Prometheus metrics: what each process counts (latency, traffic, errors).

Counters and histograms live in the process that observes them. Whoever
starts the processes of a host (`make up`, `bench/stack.py`, the test stack)
gives all of them one `PROMETHEUS_MULTIPROC_DIR`, set before anything
imports prometheus_client; each process then writes its samples to files
there and the web's `/metrics` merges every process's files, the lanes'
included (`swiftex/scrape.py`). Without the variable (pytest, a shell) the
plain in-process registry is used. Saturation gauges are not counted here:
they are read at scrape time (`swiftex/saturation.py`). docs/observability.md
lists every metric.

Labels stay few and bounded: no ids, URLs, phone numbers or secrets.
"""

from __future__ import annotations

import os
import time

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # A process started without the launcher's wipe (a lone `manage.py run_lane`) still has somewhere to write.
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from prometheus_client import Counter, Histogram  # noqa: E402 - after the directory exists

# --- Latency ---------------------------------------------------------------------
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_LATENCY = Histogram(
    "swiftex_http_request_duration_seconds",
    "HTTP request latency by route, method and status.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
# The product's promise is two seconds: buckets are dense below it, then reach the
# 5 s / 60 s / 5 min marks that sales ops talk about.
FIRST_RESPONSE = Histogram(
    "swiftex_first_response_seconds",
    "Lead captured -> a provider accepted its first outbound message (observed once per lead).",
    buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)
PROVIDER_CALL = Histogram(
    "swiftex_provider_call_duration_seconds",
    "One HTTP call to a provider (model, WhatsApp, Twilio, CRM), by provider and outcome.",
    ["provider", "outcome"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
)

# --- Traffic ---------------------------------------------------------------------
LEADS_INGESTED = Counter("swiftex_leads_ingested_total", "Lead submissions stored, by outcome.", ["outcome"])
INGEST_REJECTED = Counter("swiftex_ingest_rejected_total", "Lead submissions refused, by reason.", ["reason"])
WEBHOOKS = Counter("swiftex_webhooks_total", "Provider webhooks received, by provider and outcome.", ["provider", "outcome"])
MESSAGES_ACCEPTED = Counter(
    "swiftex_messages_accepted_total",
    "Outbound messages a provider accepted, by channel and kind (greeting, reply, followup, rep, other).",
    ["channel", "kind"],
)

# --- Errors ----------------------------------------------------------------------
PROVIDER_ERRORS = Counter(
    "swiftex_provider_errors_total",
    "Provider calls that failed, by provider and code: the provider's own code, else the HTTP status, "
    "else timeout / network_error.",
    ["provider", "code"],
)
MESSAGES_FAILED = Counter(
    "swiftex_messages_failed_total",
    "Outbound messages failed for good (at send or by a status webhook), by channel and code.",
    ["channel", "code"],
)
TASK_FAILURES = Counter("swiftex_task_failures_total", "Celery tasks that raised (retries exhausted or none allowed), by task.", ["task"])
TASK_RETRIES = Counter("swiftex_task_retries_total", "Celery task retries scheduled, by task.", ["task"])


def http_outcome(status: int) -> str:
    """A provider's HTTP answer as a call outcome (whether a retry helps is the error code's business)."""
    if 200 <= status < 300:
        return "ok"
    if status == 429:
        return "rate_limited"
    return "server_error" if status >= 500 else "client_error"


def provider_answered(provider: str, started: float, status: int) -> None:
    """A provider call that got an HTTP answer; `started` is its `time.perf_counter()`."""
    PROVIDER_CALL.labels(provider=provider, outcome=http_outcome(status)).observe(time.perf_counter() - started)


def provider_unanswered(provider: str, started: float, outcome: str) -> None:
    """A provider call with no HTTP answer: `timeout` or `network_error`, its own error code too."""
    PROVIDER_CALL.labels(provider=provider, outcome=outcome).observe(time.perf_counter() - started)
    provider_error(provider, outcome)


# Codes are labels only while they stay few: past this many distinct codes per provider
# (or channel) in a process, a new one counts as "other".
MAX_CODES = 40
_codes_seen: dict[str, set[str]] = {}


def provider_error(provider: str, code: object) -> None:
    PROVIDER_ERRORS.labels(provider=provider, code=error_code_label(provider, code)).inc()


def message_failed(channel: str, code: object) -> None:
    MESSAGES_FAILED.labels(channel=channel, code=error_code_label(channel, code)).inc()


def error_code_label(scope: str, code: object) -> str:
    """An error code fit for a label: a provider's numeric code (131026, 21610), an HTTP
    status, or one of our word codes (timeout, no_consent); "none" without one. Anything
    else, or a code past the first MAX_CODES seen for `scope`, is "other"."""
    text = str(code)
    if not text:
        return "none"
    numeric = text.isdigit() and len(text) <= 6
    word = len(text) <= 24 and text.replace("_", "").isalpha() and text.islower()
    if not (numeric or word):
        return "other"
    seen = _codes_seen.setdefault(scope, set())
    if text not in seen:
        if len(seen) >= MAX_CODES:
            return "other"
        seen.add(text)
    return text


class RequestMetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match else "unmatched"
        method = request.method if request.method in HTTP_METHODS else "other"  # anyone can send any method name
        REQUEST_LATENCY.labels(route=route, method=method, status=str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response
