"""Lead housekeeping tasks."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from leads.models import IdempotencyKey

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def expire_idempotency_keys() -> None:
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    logger.info("expired %d idempotency keys", deleted)
