"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from kombu import Connection

from swiftex import redis as swx_redis
from swiftex import scrape

logger = logging.getLogger(__name__)

READY_BROKER_TIMEOUT = 2.0


def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        # The type only: the message names the database host and user, and /readyz needs no login.
        logger.warning("readiness: database check failed: %s", exc)
        return type(exc).__name__
    return None


def _check_redis() -> str | None:
    return None if swx_redis.ping() else "unreachable"


def _check_broker() -> str | None:
    try:
        with Connection(settings.CELERY_BROKER_URL, connect_timeout=READY_BROKER_TIMEOUT) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}"
    return None


def readyz(request):
    checks = {"database": _check_database(), "redis": _check_redis(), "broker": _check_broker()}
    ready = all(error is None for error in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": {name: error or "ok" for name, error in checks.items()}}
    if not ready:
        logger.warning("not ready: %s", body["checks"])
    return JsonResponse(body, status=200 if ready else 503)


def metrics_view(request):
    return HttpResponse(scrape.render(), content_type="text/plain; version=0.0.4; charset=utf-8")
