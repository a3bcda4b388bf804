"""Exactly-once effects on top of at-least-once delivery: the processed-event ledger."""

from __future__ import annotations

from swiftex.db import prepared_cursor
from swiftex.models import ProcessedEvent

LEDGER = ProcessedEvent._meta.db_table


def record_processed(consumer: str, event_ids: list[str]) -> set[str]:
    """Insert ledger rows for `event_ids`; return the ids that were new.

    One statement for the whole batch. Ids already in the ledger (a
    redelivery) are not returned, so the caller acts on each event once.
    """
    if not event_ids:
        return set()
    with prepared_cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {LEDGER} (consumer, event_id, processed_at) "
            "SELECT %s, id, now() FROM unnest(%s::uuid[]) AS id "
            "ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id",
            [consumer, list(dict.fromkeys(event_ids))],
        )
        return {str(row[0]) for row in cursor.fetchall()}
