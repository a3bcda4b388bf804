"""What a CRM adapter is: a small interface the pusher drives.

An adapter turns contact snapshots into one request to its CRM and says, per
contact, accepted (with the CRM's id) or refused (with the CRM's message).
Whole-request failures are exceptions that say what to do next:

- RateLimited: the account is over its limit; pause its bucket this long.
- Transient: 5xx, a timeout, a broken answer; retry with backoff.
- BatchRefused: the CRM refused the request as a whole (a 4xx about the data);
  the pusher splits the batch to find the contacts at fault.
- AccountRefused: the credentials or the account itself are refused (401,
  403): no contact can go until a human fixes it.

A Salesforce adapter would map REQUEST_LIMIT_EXCEEDED to RateLimited and
reuse everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


# Contacts per request: HubSpot's batch limit, and what the dispatcher counts a push as.
MAX_BATCH = 100


@dataclass(frozen=True)
class Snapshot:
    """A contact as it is now, with its latest lead: what gets pushed."""

    sync_id: int
    contact_id: int
    lead_id: int | None
    name: str
    email: str | None
    phone: str | None
    consent: bool
    status: str
    source: str
    campaign: str
    captured_at: datetime | None
    first_response_at: datetime | None
    first_reply_at: datetime | None
    id_property: str  # kept from an earlier push by `pinned_by`, else ""
    id_value: str
    pinned_by: str  # the adapter that chose id_property
    version: int  # bumped by every change: receivers can drop a stale or repeated delivery


@dataclass(frozen=True)
class Accepted:
    crm_id: str


@dataclass(frozen=True)
class Refused:
    message: str  # about this contact only: it goes on the lead's timeline
    batch_errors: str = ""  # everything the CRM said about the batch, for the push log (admin) only


Outcome = Accepted | Refused


class CrmError(Exception):
    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message[:300])
        self.message = message[:300]
        self.status_code = status_code
        self.retry_after = retry_after


class RateLimited(CrmError):
    pass


class Transient(CrmError):
    pass


class BatchRefused(CrmError):
    pass


class AccountRefused(CrmError):
    pass


class Adapter(Protocol):
    kind: str
    max_batch: int

    def account(self) -> str:
        """Who the rate limit belongs to (never the secret itself)."""

    def identify(self, snapshot: Snapshot) -> tuple[str, str]:
        """(id property, value) naming the contact's record; one request carries one id property."""

    def push(self, snapshots: list[Snapshot]) -> dict[int, Outcome]:
        """One request; an outcome per snapshot, keyed by `sync_id`, or a CrmError."""


def iso(value: datetime | None) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else ""
