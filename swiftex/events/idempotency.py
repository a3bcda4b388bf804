"""Exactly-once effects on top of at-least-once delivery."""

from __future__ import annotations

from typing import Callable

from django.db import connection, transaction

from swiftex.models import ProcessedEvent


def handle_once(consumer: str, event_id: str, effect: Callable[[], None]) -> bool:
    """Run `effect` in one transaction with the ledger row for (consumer, event_id).

    Returns False, doing nothing, when that event was already handled. A
    concurrent duplicate blocks on the unique key until the first commits, then
    skips; a crash before commit leaves no ledger row, so the redelivery redoes it.
    """
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {ProcessedEvent._meta.db_table} (consumer, event_id, processed_at) "
                "VALUES (%s, %s, now()) ON CONFLICT (consumer, event_id) DO NOTHING RETURNING id",
                [consumer, event_id],
            )
            if cursor.fetchone() is None:
                return False
        effect()
        return True
