"""Platform housekeeping tasks, run by the scheduler on the bulk lane."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from swiftex.models import OutboxEvent, ProcessedEvent

logger = logging.getLogger(__name__)

DELETE_CHUNK = 5000


@shared_task(ignore_result=True)
def prune_outbox() -> None:
    """Delete published outbox rows and ledger rows past their retention, in chunks."""
    cutoff = timezone.now() - timedelta(hours=settings.OUTBOX_RETENTION_HOURS)
    total = 0
    for model, filters in (
        (OutboxEvent, {"published_at__lt": cutoff}),
        # Redeliveries come within minutes; a week of ledger is a wide margin.
        (ProcessedEvent, {"processed_at__lt": cutoff - timedelta(days=7)}),
    ):
        while True:
            ids = list(model.objects.filter(**filters).values_list("pk", flat=True)[:DELETE_CHUNK])
            if not ids:
                break
            total += model.objects.filter(pk__in=ids).delete()[0]
    logger.info("pruned %d outbox/ledger rows", total)
