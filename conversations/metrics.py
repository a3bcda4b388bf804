"""Scheduled-job lag for /metrics, read from PostgreSQL at scrape time (true whichever process answers).

Follow-ups and timeouts wait in `ScheduledJob` until due; the scheduler then
enqueues them at a rate that yields to new leads (conversations/followups.py).
A due job still pending (no room yet) or enqueued (on the follow-up lane, not
started) is late: how many there are and how late the oldest is say whether
the lane keeps up.
"""

from __future__ import annotations

from django.db import connection
from prometheus_client.core import GaugeMetricFamily

from conversations.models import ScheduledJob

_WAITING = (ScheduledJob.Status.PENDING, ScheduledJob.Status.ENQUEUED)
_TABLE = ScheduledJob._meta.db_table
# One branch per state, so each uses its partial index (pending: by due_at).
_DUE = " UNION ALL ".join(
    f"SELECT '{state}', count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(due_at)), 0) "
    f"FROM {_TABLE} WHERE status = '{state}' AND due_at <= now()"
    for state in _WAITING
)


class ScheduledJobCollector:
    DUE = ("swiftex_scheduled_jobs_due", "Scheduled jobs past due and not started, by state (pending, enqueued).")
    LAG = ("swiftex_scheduled_jobs_lag_seconds", "How far past due the oldest not-yet-started job is (0 when none).")

    def describe(self):
        yield GaugeMetricFamily(*self.DUE, labels=["state"])
        yield GaugeMetricFamily(*self.LAG)

    def collect(self):
        with connection.cursor() as cursor:
            cursor.execute(_DUE)
            rows = cursor.fetchall()
        due = GaugeMetricFamily(*self.DUE, labels=["state"])
        for state, count, _ in rows:
            due.add_metric([state], count)
        yield due
        yield GaugeMetricFamily(*self.LAG, value=max(float(lag) for _, _, lag in rows))
