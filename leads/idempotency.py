"""`Idempotency-Key`: a retried request gets the first request's response, once.

The key row is claimed with `INSERT … ON CONFLICT DO NOTHING` inside the same
transaction as the lead, and the response is stored before commit. A retry
racing the original blocks on the unique key until the original commits and
then replays it; if the original rolled back, the retry does the work itself.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from django.db import connection, transaction

from leads.models import IdempotencyKey, Organization

MAX_KEY_LENGTH = 255


class IdempotencyKeyReused(Exception):
    """The key was used before with a different request body."""


@dataclass
class Slot:
    key_id: int | None = None
    replay_status: int | None = None
    replay_body: dict | None = None

    @property
    def is_replay(self) -> bool:
        return self.replay_status is not None

    def save(self, status: int, body: dict) -> None:
        if self.key_id is not None:
            IdempotencyKey.objects.filter(pk=self.key_id).update(response_status=status, response_body=body)


def fingerprint(body: dict) -> str:
    """The request body's identity, insensitive to key order and whitespace."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@contextmanager
def idempotent(org: Organization, key: str | None, body: dict, *, source: str = "") -> Iterator[Slot]:
    """With a key: a transaction that either replays the stored response or records the new one.

    Without a key: nothing at all (no transaction, no hashing), so the work
    runs exactly as it would on its own. `source` (a partner's key pinned to one): its keys
    are its own, apart from the organization's other keys; stored hashed, within the column.
    """
    if not key:
        yield Slot()
        return
    if source:
        key = "source:" + hashlib.sha256(f"{source}\n{key}".encode()).hexdigest()
    request_hash = fingerprint(body)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {IdempotencyKey._meta.db_table} (organization_id, key, request_hash, created_at) "
                "VALUES (%s, %s, %s, now()) ON CONFLICT (organization_id, key) DO NOTHING RETURNING id",
                [org.pk, key, request_hash],
            )
            row = cursor.fetchone()
        if row:
            yield Slot(key_id=row[0])
            return
        stored = IdempotencyKey.objects.get(organization=org, key=key)
        if stored.request_hash != request_hash:
            raise IdempotencyKeyReused(key)
        yield Slot(replay_status=stored.response_status, replay_body=stored.response_body)
