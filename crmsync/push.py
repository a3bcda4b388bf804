"""One push: claim a batch of an organization's due contacts and send it to its CRM.

The request rate is the CRM account's, shared by every worker on every
machine through a Redis token bucket (`swiftex.ratelimit`, atomic Lua). The
first token is taken before anything is claimed, so a worker waiting for a
busy account holds no rows; the few further requests of a batch (a second id
property, splitting a refused batch) wait with their rows claimed, at most
half the lease, after which the rest goes back to the queue. The record's id
property is kept on the row before the first request, so a retry after a
lost answer names the same record. Outcomes:

- accepted: SYNCED with the CRM's id (PENDING again if it changed meanwhile);
- refused item: FAILED with the CRM's message, the rest of the batch goes on;
- refused batch (a 4xx about the data): split in halves until the contacts
  at fault are found; when both halves fail exactly as the whole did, the
  request itself is at fault (a missing property, a bad setting) and every
  contact in it is FAILED with that message;
- 429: the account's bucket is paused for Retry-After on every worker; the
  batch waits as long, without spending an attempt;
- 5xx, timeouts: retried with capped exponential backoff and jitter;
  dead-lettered after CRM_SYNC_MAX_ATTEMPTS (admin lists them, with retry);
- credentials refused (401/403): FAILED, until someone fixes the token.

Every request is logged (`CrmPush`) for /metrics and admin; every contact's
outcome is on its latest lead's timeline.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from conversations import timeline
from crmsync import adapters, queue
from crmsync.adapters.base import (
    Accepted, AccountRefused, Adapter, BatchRefused, CrmError, RateLimited, Refused, Snapshot, Transient,
)
from crmsync.models import CrmPush
from leads.models import Organization
from swiftex import ratelimit

logger = logging.getLogger(__name__)

# How long a push may wait for its account's next token before leaving the rest to a later tick.
MAX_TOKEN_WAIT_SECONDS = 2.0
Outcome = CrmPush.Outcome


def push_due(organization_id: int) -> int:
    """Push one batch of the organization's due contacts; returns how many were sent."""
    org = Organization.objects.get(pk=organization_id)
    adapter = adapters.for_org(org)
    if adapter is None:
        return 0
    batch = _Batch(org, adapter)
    if not batch.wait_for_token():
        return 0
    sync_ids, batch.claimed_at = queue.claim(org.pk, adapter.max_batch)
    if not sync_ids:
        return 0
    snapshots = queue.snapshots(sync_ids)
    identities = {s.sync_id: adapter.identify(s) for s in snapshots}
    queue.pin_ids(adapter.kind, batch.claimed_at, [(sync_id, *identity) for sync_id, identity in identities.items()])
    groups: dict[str, list[Snapshot]] = {}
    for snapshot in snapshots:
        groups.setdefault(identities[snapshot.sync_id][0], []).append(snapshot)
    for group in groups.values():
        batch.deliver(group)
    return len(snapshots)


class _Batch:
    def __init__(self, org: Organization, adapter: Adapter) -> None:
        self.org = org
        self.adapter = adapter
        self.bucket = f"crm:{org.pk}:{adapter.account()}"
        self.token_in_hand = False
        self.claimed_at = None
        # Splitting a refused batch takes many requests; stop well inside the lease, so the
        # rows are never reaped and pushed by another worker while this one still works on them.
        self.deadline = time.monotonic() + settings.CRM_SYNC_LEASE_SECONDS / 2

    def wait_for_token(self) -> bool:
        if self.token_in_hand:
            return True
        deadline = time.monotonic() + MAX_TOKEN_WAIT_SECONDS
        while True:
            decision = ratelimit.take(self.bucket, rate_per_second=self.org.crm_requests_per_second, capacity=1)
            if decision.allowed:
                self.token_in_hand = True
                return True
            if time.monotonic() + decision.retry_after > deadline:
                return False
            time.sleep(decision.retry_after)

    def deliver(self, group: list[Snapshot]) -> None:
        message = self.attempt(group)
        if message is not None:
            self.isolate(group, message)

    def isolate(self, group: list[Snapshot], message: str) -> None:
        """`group` was refused as a whole with `message`: find the contacts at fault."""
        if len(group) == 1:
            self.refuse(group, message)
            return
        half = len(group) // 2
        parts = [(part, self.attempt(part)) for part in (group[:half], group[half:])]
        if all(refused == message for _, refused in parts):
            self.refuse(group, message)  # each half fails as the whole did: not one contact's fault
            return
        for part, refused in parts:
            if refused is not None:
                self.isolate(part, refused)

    def attempt(self, group: list[Snapshot]) -> str | None:
        """One request for `group`, settled; the message if the CRM refused it as a whole."""
        if time.monotonic() > self.deadline or not self.wait_for_token():
            self.settle_error(group, Transient("the CRM account's rate limit left no room; later"), count_attempt=False)
            return None
        self.token_in_hand = False
        started = time.perf_counter()
        try:
            outcomes = self.adapter.push(group)
        except BatchRefused as exc:
            self.log(Outcome.REJECTED, group, started, exc)
            return exc.message
        except AccountRefused as exc:
            self.log(Outcome.REJECTED, group, started, exc)
            self.refuse(group, exc.message)
        except RateLimited as exc:
            self.log(Outcome.RATE_LIMITED, group, started, exc)
            pause = exc.retry_after or 1.0
            ratelimit.pause(self.bucket, pause)
            self.settle_error(group, exc, after=pause, count_attempt=False)
        except Transient as exc:
            self.log(Outcome.ERROR, group, started, exc)
            self.settle_error(group, exc, after=exc.retry_after)
        except Exception as exc:  # a bug here must not strand the batch IN_FLIGHT until the lease ends
            self.log(Outcome.ERROR, group, started, CrmError(f"{type(exc).__name__}: {exc}"))
            self.settle_error(group, CrmError(f"{type(exc).__name__}: {exc}"))
            raise
        else:
            refused = [o for o in outcomes.values() if isinstance(o, Refused)]
            self.log(Outcome.PARTIAL if refused or len(outcomes) < len(group) else Outcome.OK, group, started, None,
                     detail=next((o.batch_errors for o in refused if o.batch_errors), ""))
            self.settle(group, outcomes)
        return None

    # --- settling: one statement per kind of outcome, plus the timeline ---------------------

    def settle(self, group: list[Snapshot], outcomes: dict) -> None:
        by_id = {s.sync_id: s for s in group}
        accepted = [s for s in group if isinstance(outcomes.get(s.sync_id), Accepted)]
        refused = [(s, outcomes[s.sync_id].message) for s in group if isinstance(outcomes.get(s.sync_id), Refused)]
        missing = [s for s in group if s.sync_id not in outcomes]
        now = timezone.now()
        with transaction.atomic():
            settled = queue.settle_accepted(self.adapter.kind, self.claimed_at, [
                (s.sync_id, outcomes[s.sync_id].crm_id, *self.adapter.identify(s)) for s in accepted
            ])
            # The timeline shows the sync's state changes (first in the CRM, back after a failure),
            # not every update; the lead API shows the latest (`crm_sync`).
            entries = [
                _entry(by_id[sync_id], "crm.synced", {"crm": self.adapter.kind, "crm_id": outcomes[sync_id].crm_id,
                                                      "status": by_id[sync_id].status}, now)
                for sync_id, first in settled if first
            ]
            timeline.record_many([e for e in entries if e is not None])
            if refused:
                self._refuse(refused, now)
        if missing:
            self.settle_error(missing, Transient("the CRM's answer did not mention these contacts"))

    def refuse(self, group: list[Snapshot], message: str) -> None:
        with transaction.atomic():
            self._refuse([(s, message) for s in group], timezone.now())

    def _refuse(self, refused: list[tuple[Snapshot, str]], now: datetime) -> None:
        ids = set(queue.settle_refused(self.adapter.kind, self.claimed_at, [(s.sync_id, m) for s, m in refused]))
        entries = [_entry(s, "crm.failed", {"crm": self.adapter.kind, "error": m}, now) for s, m in refused if s.sync_id in ids]
        timeline.record_many([e for e in entries if e is not None])

    def settle_error(self, group: list[Snapshot], exc: CrmError, *, after: float | None = None, count_attempt: bool = True) -> None:
        with transaction.atomic():
            dead = set(queue.retry_later([s.sync_id for s in group], self.claimed_at, error=exc.message, after=after,
                                         count_attempt=count_attempt))
            now = timezone.now()
            entries = [_entry(s, "crm.dead_lettered", {"crm": self.adapter.kind, "error": exc.message}, now)
                       for s in group if s.sync_id in dead]
            timeline.record_many([e for e in entries if e is not None])
        if dead:
            logger.warning("crm sync: %d contacts of organization %s dead-lettered: %s", len(dead), self.org.pk, exc.message)

    def log(self, outcome: str, group: list[Snapshot], started: float, exc: CrmError | None, *, detail: str = "") -> None:
        CrmPush.objects.create(
            organization=self.org, adapter=self.adapter.kind, outcome=outcome, items=len(group),
            status_code=exc.status_code if exc else None, duration_ms=round((time.perf_counter() - started) * 1000, 1),
            detail=(exc.message if exc else detail)[:2000], at=timezone.now(),
        )


def _entry(snapshot: Snapshot, kind: str, data: dict, at: datetime) -> tuple | None:
    return (snapshot.lead_id, kind, data, at) if snapshot.lead_id else None
