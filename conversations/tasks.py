"""Conversation tasks. Thin: ids in, one service call, nothing returned."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from conversations import services

# Transient: the database blipped (retried with backoff). A lead that no longer
# exists is not an error: the service records nothing and returns.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


@shared_task(
    ignore_result=True,
    autoretry_for=TRANSIENT_DB_ERRORS,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=8,
)
def first_touch(*, event_id: str, lead_id: int) -> None:
    services.first_touch_start(event_id=event_id, lead_id=lead_id)
