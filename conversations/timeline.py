"""Timeline entries for the first touch, each with how long after capture it happened.

`since_capture_ms` on every step (published, started, composed, accepted,
sent, delivered, read) shows a rep where each millisecond of the first
response went; analytics reads the same rows.
"""

from __future__ import annotations

import json
from datetime import datetime

from django.db import connection

from leads.models import Lead, LeadEvent

def ms_between(start: str, end: str) -> str:
    """SQL for the milliseconds from `start` to `end` (two timestamp expressions), 0.1 ms precision."""
    return f"round((EXTRACT(EPOCH FROM {end} - {start}) * 1000)::numeric, 1)"


_INSERT = f"""
INSERT INTO {LeadEvent._meta.db_table} (lead_id, kind, data, occurred_at)
SELECT lead.id, entry.kind,
       entry.data || jsonb_build_object(
           'since_capture_ms', {ms_between("lead.captured_at", "entry.at")}),
       entry.at
FROM unnest(%(leads)s::bigint[], %(kinds)s::text[], %(datas)s::jsonb[], %(ats)s::timestamptz[]) AS entry(lead_id, kind, data, at)
JOIN {Lead._meta.db_table} AS lead ON lead.id = entry.lead_id
"""


def record(lead_id: int, *entries: tuple[str, dict, datetime]) -> None:
    """Append (kind, data, when) entries to the lead's timeline, in one statement."""
    record_many([(lead_id, kind, data, at) for kind, data, at in entries])


def record_many(entries: list[tuple[int, str, dict, datetime]]) -> None:
    """Append (lead id, kind, data, when) entries to any leads' timelines, in one statement."""
    if not entries:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT,
            {
                "leads": [lead_id for lead_id, _, _, _ in entries],
                "kinds": [kind for _, kind, _, _ in entries],
                "datas": [json.dumps(data) for _, _, data, _ in entries],
                "ats": [at for _, _, _, at in entries],
            },
        )
