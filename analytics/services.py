"""Keeping the facts and roll-ups true: `refresh(lead_ids)`.

Events only say *which* leads changed; the facts are recomputed from the
source of truth (lead, messages, timeline, assignment) in one statement, so
an event seen twice, late or out of order changes nothing it should not.
The same statement moves the hourly roll-ups by the difference between each
lead's old and new facts (+1 greeted when a first response appears, -1/+1
across buckets if a lead's source is edited), so a roll-up is never
recounted from scratch: at 5,000 leads a minute an hour holds 300,000 leads.

Two batches touching one organization at once would each compute deltas
against facts the other is changing; a transaction-level advisory lock per
organization puts them one after the other.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from analytics.models import HourlyStat, LeadFact
from conversations.models import Message
from leads.models import Lead, LeadEvent, Organization
from routing.models import Assignment
from swiftex.db import fetch_rows, prepared_cursor

ADVISORY_LOCK_SPACE = 0x5A41  # first key of pg_advisory_xact_lock(int, int): analytics, per organization
QUALIFIED_STATUSES = (Lead.Status.QUALIFIED, Lead.Status.WON)

_FACT = LeadFact._meta.db_table
_STAT = HourlyStat._meta.db_table
_FACT_COLUMNS = (
    "organization_id", "source", "campaign", "status", "captured_at", "first_response_at", "first_response_ms", "channel",
    "delivered_at", "read_at", "replied_at", "qualified_at", "rep_id", "rep_acted_at",
)
# Roll-up counters and the fact condition each counts.
_COUNTED = {
    "leads": "true",
    "greeted": "first_response_ms IS NOT NULL",
    "delivered": "delivered_at IS NOT NULL",
    "read": "read_at IS NOT NULL",
    "replied": "replied_at IS NOT NULL",
    "qualified": "qualified_at IS NOT NULL",
    "within_5s": "first_response_ms <= 5000",
    "within_60s": "first_response_ms <= 60000",
    "within_5m": "first_response_ms <= 300000",
}
_QUALIFIED_SQL = ", ".join(f"'{status}'" for status in QUALIFIED_STATUSES)

LOCK = f"""
SELECT pg_advisory_xact_lock({ADVISORY_LOCK_SPACE}, org)
FROM (SELECT DISTINCT organization_id::int AS org FROM {Lead._meta.db_table} WHERE id = ANY(%(ids)s::bigint[]) ORDER BY 1) AS orgs
"""


def lock_organizations(organization_id: int | None = None) -> None:
    """Inside a transaction: the lock `refresh` takes, for one organization or all (in id order)."""
    only = "WHERE id = %(org)s" if organization_id is not None else ""
    fetch_rows(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_SPACE}, id::int) FROM {Organization._meta.db_table} {only} ORDER BY id",
               {"org": organization_id})

REFRESH = f"""
WITH old AS (
    SELECT * FROM {_FACT} WHERE lead_id = ANY(%(ids)s::bigint[])
), new AS (
    SELECT lead.id AS lead_id, lead.organization_id, lead.source, lead.campaign, lead.status, lead.captured_at,
           lead.first_response_at,
           -- (GREATEST skips NULLs: without the CASE an unanswered lead would read 0 ms.)
           CASE WHEN lead.first_response_at IS NOT NULL
                THEN GREATEST(0, round(EXTRACT(EPOCH FROM lead.first_response_at - lead.captured_at) * 1000))::int
           END AS first_response_ms,
           COALESCE(first_out.channel, '') AS channel,
           outbound.delivered_at, outbound.read_at, inbound.replied_at,
           -- The timeline says when; a status set without one (admin) counts from when it was first seen.
           COALESCE(qualified.at, old.qualified_at,
                    CASE WHEN lead.status IN ({_QUALIFIED_SQL}) THEN %(now)s::timestamptz END) AS qualified_at,
           assignment.rep_id, assignment.acted_at AS rep_acted_at
    FROM {Lead._meta.db_table} AS lead
    LEFT JOIN old ON old.lead_id = lead.id
    LEFT JOIN {Assignment._meta.db_table} AS assignment ON assignment.lead_id = lead.id
    LEFT JOIN LATERAL (
        SELECT channel FROM {Message._meta.db_table}
        WHERE lead_id = lead.id AND direction = 'outbound' AND accepted_at IS NOT NULL ORDER BY accepted_at LIMIT 1
    ) AS first_out ON true
    LEFT JOIN LATERAL (
        -- WhatsApp may skip "delivered" and go straight to "read".
        SELECT min(COALESCE(delivered_at, read_at)) AS delivered_at, min(read_at) AS read_at
        FROM {Message._meta.db_table} WHERE lead_id = lead.id AND direction = 'outbound'
    ) AS outbound ON true
    LEFT JOIN LATERAL (
        SELECT min(created_at) AS replied_at FROM {Message._meta.db_table} WHERE lead_id = lead.id AND direction = 'inbound'
    ) AS inbound ON true
    LEFT JOIN LATERAL (
        SELECT min(occurred_at) AS at FROM {LeadEvent._meta.db_table}
        WHERE lead_id = lead.id AND kind = 'lead.status_changed' AND data->>'to' IN ({_QUALIFIED_SQL})
    ) AS qualified ON true
    WHERE lead.id = ANY(%(ids)s::bigint[]) AND NOT lead.imported  -- a CSV list is not speed-to-lead
), upsert AS (
    INSERT INTO {_FACT} (lead_id, {", ".join(_FACT_COLUMNS)}, updated_at)
    SELECT lead_id, {", ".join(_FACT_COLUMNS)}, %(now)s FROM new
    ON CONFLICT (lead_id) DO UPDATE SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _FACT_COLUMNS)}, updated_at = EXCLUDED.updated_at
), changes AS (
    SELECT 1 AS sign, organization_id, source, campaign, captured_at, first_response_ms, delivered_at, read_at, replied_at, qualified_at
    FROM new
    UNION ALL
    SELECT -1, organization_id, source, campaign, captured_at, first_response_ms, delivered_at, read_at, replied_at, qualified_at
    FROM old
), delta AS (
    SELECT organization_id, source, campaign, date_trunc('hour', captured_at) AS hour,
           {", ".join(f"sum(sign * COALESCE({condition}, false)::int) AS {name}" for name, condition in _COUNTED.items())},
           sum(sign * COALESCE(first_response_ms, 0)) AS response_ms_sum
    FROM changes
    GROUP BY 1, 2, 3, 4
)
INSERT INTO {_STAT} AS stat (organization_id, source, campaign, hour, {", ".join(_COUNTED)}, response_ms_sum)
SELECT * FROM delta
WHERE ({", ".join(_COUNTED)}, response_ms_sum) <> ({", ".join("0" for _ in _COUNTED)}, 0)
ON CONFLICT (organization_id, hour, source, campaign) DO UPDATE SET
    {", ".join(f"{name} = stat.{name} + EXCLUDED.{name}" for name in (*_COUNTED, "response_ms_sum"))}
"""


def refresh(lead_ids: list[int] | set[int], *, now: datetime | None = None) -> None:
    """Recompute these leads' facts and move their hourly roll-ups: two statements, any number of leads."""
    ids = sorted({int(lead_id) for lead_id in lead_ids})
    if not ids:
        return
    params = {"ids": ids, "now": now or timezone.now()}
    with transaction.atomic(), prepared_cursor() as cursor:
        cursor.execute(LOCK, params)
        cursor.execute(REFRESH, params)
