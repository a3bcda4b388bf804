"""The sync queue in PostgreSQL: mark contacts changed, claim batches, settle them.

Every function is one statement over a whole batch. A claimed row is
IN_FLIGHT under a lease (`claimed_at`); a worker killed mid-batch leaves it so
until `reap_stuck` puts it back to PENDING after CRM_SYNC_LEASE_SECONDS. The
CRM call is an upsert, so pushing a contact again after a crash never makes a
second record.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from conversations.models import Message
from crmsync.adapters.base import MAX_BATCH, Snapshot
from crmsync.models import ContactSync
from leads.models import Contact, Lead, Organization
from swiftex.db import fetch_rows

_SYNC = ContactSync._meta.db_table
State = ContactSync.State



def mark_changed(lead_ids: list[int] = (), contact_ids: list[int] = ()) -> int:
    """These leads' contacts (and these contacts) changed: queue them (organizations with a CRM only).

    A contact already queued just gets a higher version (coalesced). A new
    change gets CRM_SYNC_GATHER_SECONDS before its first push, so a lead
    created and greeted a moment later goes out once, with its latest status.
    A failed or dead-lettered contact gets a fresh start; one waiting out a
    backoff keeps waiting. Rows are locked in contact order, as settles lock
    them in id order, so two transactions never wait on each other in a circle.
    """
    if not lead_ids and not contact_ids:
        return 0
    return len(fetch_rows(
        f"""
        INSERT INTO {_SYNC} AS s (organization_id, contact_id, state, version, synced_version, next_attempt_at,
                                  attempts, adapter, crm_id, id_property, id_value, last_error, changed_at)
        SELECT c.organization_id, c.id, 'pending', 1, 0, now() + %(gather)s, 0, '', '', '', '', '', now()
        FROM {Contact._meta.db_table} c JOIN {Organization._meta.db_table} o ON o.id = c.organization_id
        WHERE o.crm_adapter <> ''
          AND (c.id = ANY(%(contacts)s) OR c.id IN (SELECT contact_id FROM {Lead._meta.db_table} WHERE id = ANY(%(leads)s)))
        ORDER BY c.id
        ON CONFLICT (contact_id) DO UPDATE SET
            version = s.version + 1,
            changed_at = now(),
            state = CASE WHEN s.state = 'in_flight' THEN s.state ELSE 'pending' END,
            attempts = CASE WHEN s.state IN ('failed', 'dead') THEN 0 ELSE s.attempts END,
            next_attempt_at = CASE WHEN s.state IN ('synced', 'failed', 'dead') THEN now() + %(gather)s
                                   ELSE s.next_attempt_at END
        RETURNING s.id
        """,
        {"leads": list(set(lead_ids)), "contacts": list(set(contact_ids)),
         "gather": timedelta(seconds=settings.CRM_SYNC_GATHER_SECONDS)},
    ))


def due_by_organization() -> list[tuple[int, int]]:
    """(organization id, contacts due, counted up to what one tick can push) for every organization
    with something to push. Counting no further keeps the dispatcher's tick cheap behind a
    backlog of a million contacts (a big import to a rate-limited CRM)."""
    return fetch_rows(
        f"""
        SELECT o.id, due.n FROM {Organization._meta.db_table} o,
        LATERAL (SELECT count(*) AS n FROM (
            SELECT 1 FROM {_SYNC} s WHERE s.organization_id = o.id AND s.state = 'pending' AND s.next_attempt_at <= now()
            LIMIT GREATEST(1, floor(o.crm_requests_per_second * %(tick)s))::int * %(batch)s) AS capped) AS due
        WHERE o.crm_adapter <> '' AND due.n > 0
        """,
        {"tick": settings.CRM_SYNC_TICK_SECONDS, "batch": MAX_BATCH},
    )


def reap_stuck() -> int:
    """IN_FLIGHT past the lease (its worker died mid-push): back to PENDING."""
    return len(fetch_rows(
        f"""
        UPDATE {_SYNC} SET state = 'pending', claimed_at = NULL, pushing_version = NULL, next_attempt_at = now()
        WHERE id IN (SELECT id FROM {_SYNC} WHERE state = 'in_flight' AND claimed_at < now() - %s
                     FOR UPDATE SKIP LOCKED)
        RETURNING id
        """,
        [timedelta(seconds=settings.CRM_SYNC_LEASE_SECONDS)],
    ))


def claim(organization_id: int, limit: int) -> tuple[list[int], datetime | None]:
    """Take up to `limit` due contacts of one organization, oldest due first.

    Returns their ids and the claim's `claimed_at`, which every settle must
    match: a push that outlived its lease (its rows reaped and claimed again)
    can no longer overwrite what the newer push settles.
    """
    rows = fetch_rows(
        f"""
        UPDATE {_SYNC} SET state = 'in_flight', claimed_at = now(), pushing_version = version
        WHERE id IN (SELECT id FROM {_SYNC}
                     WHERE organization_id = %s AND state = 'pending' AND next_attempt_at <= now()
                     ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED)
        RETURNING id, claimed_at
        """,
        [organization_id, limit],
    )
    return sorted(row[0] for row in rows), (rows[0][1] if rows else None)


def pin_ids(adapter: str, claimed_at: datetime, pins: list[tuple[int, str, str]]) -> None:
    """Keep (sync id, id property, value) on rows that have none for this adapter yet, before the
    first request: a retry after a lost answer must name the record the same way."""
    if not pins:
        return
    fetch_rows(
        f"""
        UPDATE {_SYNC} s SET id_property = p.prop, id_value = p.value, adapter = %(adapter)s
        FROM unnest(%(ids)s::bigint[], %(props)s::text[], %(values)s::text[]) AS p(id, prop, value)
        WHERE s.id = p.id AND s.claimed_at = %(claimed_at)s AND (s.id_property = '' OR s.adapter <> %(adapter)s)
        """,
        {"adapter": adapter, "claimed_at": claimed_at, "ids": [p[0] for p in pins], "props": [p[1] for p in pins],
         "values": [p[2] for p in pins]},
    )


def snapshots(sync_ids: list[int]) -> list[Snapshot]:
    """Each claimed contact as it is now, with its latest lead and first reply."""
    rows = fetch_rows(
        f"""
        SELECT s.id, c.id, lead.id, c.name, c.email, c.phone, c.consent, lead.status, lead.source, lead.campaign,
               lead.captured_at, lead.first_response_at, reply.at, s.id_property, s.id_value, s.adapter, s.version
        FROM {_SYNC} s
        JOIN {Contact._meta.db_table} c ON c.id = s.contact_id
        LEFT JOIN LATERAL (SELECT id, status, source, campaign, captured_at, first_response_at
                           FROM {Lead._meta.db_table} WHERE contact_id = c.id ORDER BY id DESC LIMIT 1) lead ON true
        LEFT JOIN LATERAL (SELECT min(m.created_at) AS at FROM {Message._meta.db_table} m
                           WHERE m.lead_id = lead.id AND m.direction = 'inbound') reply ON true
        WHERE s.id = ANY(%s)
        ORDER BY s.id
        """,
        [sync_ids],
    )
    return [
        Snapshot(sync_id=r[0], contact_id=r[1], lead_id=r[2], name=r[3] or "", email=r[4], phone=r[5], consent=r[6],
                 status=r[7] or "", source=r[8] or "", campaign=r[9] or "", captured_at=r[10], first_response_at=r[11],
                 first_reply_at=r[12], id_property=r[13], id_value=r[14], pinned_by=r[15], version=r[16])
        for r in rows
    ]


def settle_accepted(adapter: str, claimed_at: datetime, accepted: list[tuple[int, str, str, str]]) -> list[tuple[int, bool]]:
    """(sync id, CRM id, id property, id value) the CRM took: SYNCED, or PENDING again if the
    contact changed while in flight. Returns (sync id, newly synced: first time or after a failure)."""
    if not accepted:
        return []
    accepted = sorted(accepted)
    return fetch_rows(
        f"""
        UPDATE {_SYNC} s SET
            state = CASE WHEN s.version > s.pushing_version THEN 'pending' ELSE 'synced' END,
            synced_version = s.pushing_version, pushing_version = NULL, claimed_at = NULL,
            next_attempt_at = now(), attempts = 0, last_error = '', synced_at = now(), adapter = %(adapter)s,
            crm_id = a.crm_id, id_property = a.prop, id_value = a.value
        FROM unnest(%(ids)s::bigint[], %(crm_ids)s::text[], %(props)s::text[], %(values)s::text[]) AS a(id, crm_id, prop, value),
             LATERAL (SELECT crm_id AS old_crm_id, last_error AS old_error FROM {_SYNC} WHERE id = a.id) old
        WHERE s.id = a.id AND s.state = 'in_flight' AND s.claimed_at = %(claimed_at)s
        RETURNING s.id, (old.old_crm_id = '' OR old.old_error <> '')
        """,
        {"adapter": adapter, "claimed_at": claimed_at, "ids": [a[0] for a in accepted], "crm_ids": [a[1] for a in accepted],
         "props": [a[2] for a in accepted], "values": [a[3] for a in accepted]},
    )


def settle_refused(adapter: str, claimed_at: datetime, refused: list[tuple[int, str]]) -> list[int]:
    """The CRM refused these contacts (its message kept): FAILED until a change or a retry."""
    if not refused:
        return []
    refused = sorted(refused)
    return [row[0] for row in fetch_rows(
        f"""
        UPDATE {_SYNC} s SET
            state = CASE WHEN s.version > s.pushing_version THEN 'pending' ELSE 'failed' END,
            pushing_version = NULL, claimed_at = NULL, next_attempt_at = now(), adapter = %(adapter)s,
            last_error = r.message
        FROM unnest(%(ids)s::bigint[], %(messages)s::text[]) AS r(id, message)
        WHERE s.id = r.id AND s.state = 'in_flight' AND s.claimed_at = %(claimed_at)s
        RETURNING s.id
        """,
        {"adapter": adapter, "claimed_at": claimed_at, "ids": [r[0] for r in refused], "messages": [r[1] for r in refused]},
    )]


def retry_later(sync_ids: list[int], claimed_at: datetime, *, error: str, after: float | None = None,
                count_attempt: bool = True) -> list[int]:
    """Back to PENDING. A counted attempt waits the backoff, min(CRM_SYNC_BACKOFF_MAX_SECONDS,
    CRM_SYNC_BACKOFF_BASE_SECONDS * 2^attempts) times a random 0.5-1 (so workers do not retry
    in step), or `after` seconds (a CRM's Retry-After) if that is longer: a short Retry-After on
    every answer must not spend CRM_SYNC_MAX_ATTEMPTS in seconds. An uncounted one (a rate
    limit) waits `after` as asked. A counted attempt past CRM_SYNC_MAX_ATTEMPTS dead-letters
    the contact; returns the ids dead-lettered now."""
    if not sync_ids:
        return []
    rows = fetch_rows(
        f"""
        UPDATE {_SYNC} s SET
            attempts = s.attempts + %(counted)s,
            state = CASE WHEN s.attempts + %(counted)s >= %(max)s AND s.version <= s.pushing_version THEN 'dead'
                         ELSE 'pending' END,
            pushing_version = NULL, claimed_at = NULL, last_error = %(error)s,
            next_attempt_at = now() + make_interval(secs => CASE WHEN %(counted)s = 1
                THEN GREATEST(COALESCE(%(after)s::float8, 0), LEAST(%(cap)s, %(base)s * power(2, s.attempts)) * (0.5 + random() / 2))
                ELSE COALESCE(%(after)s::float8, LEAST(%(cap)s, %(base)s * power(2, s.attempts)) * (0.5 + random() / 2)) END)
        WHERE s.id = ANY(%(ids)s) AND s.state = 'in_flight' AND s.claimed_at = %(claimed_at)s
        RETURNING s.id, s.state
        """,
        {"claimed_at": claimed_at, "ids": sorted(sync_ids), "after": after, "counted": int(count_attempt), "error": error[:1000],
         "max": settings.CRM_SYNC_MAX_ATTEMPTS, "cap": settings.CRM_SYNC_BACKOFF_MAX_SECONDS,
         "base": settings.CRM_SYNC_BACKOFF_BASE_SECONDS},
    )
    return [sync_id for sync_id, state in rows if state == State.DEAD]


def retry_now(sync_ids: list[int]) -> int:
    """An admin's retry of failed or dead-lettered contacts: PENDING at once, attempts reset."""
    return len(fetch_rows(
        f"UPDATE {_SYNC} SET state = 'pending', attempts = 0, next_attempt_at = now() "
        "WHERE id = ANY(%s) AND state IN ('failed', 'dead') RETURNING id",
        [sync_ids],
    ))
