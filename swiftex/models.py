"""Platform tables: the transactional outbox and the consumers' processed-event ledger."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class OutboxEvent(models.Model):
    """An event written in the same transaction as the change it describes.

    A row is published at least once: by the in-process fast path right after
    commit, or by the relay if that did not happen. `published_at` is set only
    after RabbitMQ confirmed the publish.
    """

    event_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    event_type = models.CharField(max_length=64)
    organization_id = models.BigIntegerField(null=True, blank=True)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            # The relay and the backlog metric only ever look at unpublished rows.
            models.Index(fields=["id"], name="outbox_unpublished_idx", condition=Q(published_at__isnull=True)),
            models.Index(fields=["published_at"], name="outbox_published_at_idx", condition=Q(published_at__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class ProcessedEvent(models.Model):
    """One row per (consumer, event) handled: the source of truth for idempotency.

    Written in the same transaction as the consumer's own effects, so a message
    redelivered after a crash either finds this row (and is skipped) or finds
    nothing at all (and is handled from scratch).
    """

    consumer = models.CharField(max_length=64)
    event_id = models.UUIDField()
    processed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["consumer", "event_id"], name="processed_event_once")]
        indexes = [models.Index(fields=["processed_at"], name="processed_event_age_idx")]

    def __str__(self) -> str:
        return f"{self.consumer} {self.event_id}"
