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
FROM {Lead._meta.db_table} AS lead,
     unnest(%(kinds)s::text[], %(datas)s::jsonb[], %(ats)s::timestamptz[]) AS entry(kind, data, at)
WHERE lead.id = %(lead_id)s
"""


def record(lead_id: int, *entries: tuple[str, dict, datetime]) -> None:
    """Append (kind, data, when) entries to the lead's timeline, in one statement."""
    if not entries:
        return

    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT,
            {
                "lead_id": lead_id,
                "kinds": [kind for kind, _, _ in entries],
                "datas": [json.dumps(data) for _, data, _ in entries],
                "ats": [at for _, _, at in entries],
            },
        )
