"""CRM sync gauges for /metrics, read from PostgreSQL at scrape time (true whichever process answers)."""

from __future__ import annotations

from django.db import connection
from prometheus_client.core import GaugeMetricFamily

from crmsync.models import ContactSync, CrmPush


class CrmSyncCollector:
    BY_STATE = ("swiftex_crm_sync_contacts", "Contacts in the CRM sync queue by state (pending, in_flight, failed, dead).")
    OLDEST = ("swiftex_crm_sync_oldest_pending_age_seconds", "How long the oldest unsynced change has waited.")
    PUSHES = ("swiftex_crm_pushes_last_minute", "Requests to CRMs in the last minute, by outcome (rate_limited = 429).")
    LIMITED = ("swiftex_crm_rate_limited_last_hour", "CRM answers of 429 in the last hour.")

    def describe(self):
        yield GaugeMetricFamily(*self.BY_STATE, labels=["state"])
        yield GaugeMetricFamily(*self.OLDEST)
        yield GaugeMetricFamily(*self.PUSHES, labels=["outcome"])
        yield GaugeMetricFamily(*self.LIMITED)

    def collect(self):
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT state, count(*) FROM {ContactSync._meta.db_table} WHERE state <> 'synced' GROUP BY state"
            )
            by_state = dict(cursor.fetchall())
            cursor.execute(
                f"SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(changed_at)), 0) FROM {ContactSync._meta.db_table} "
                "WHERE state IN ('pending', 'in_flight')"
            )
            oldest = float(cursor.fetchone()[0])
            cursor.execute(
                f"SELECT outcome, count(*) FILTER (WHERE at > now() - interval '1 minute'), count(*) "
                f"FROM {CrmPush._meta.db_table} WHERE at > now() - interval '1 hour' GROUP BY outcome"
            )
            pushes = {outcome: (minute, hour) for outcome, minute, hour in cursor.fetchall()}
        states = GaugeMetricFamily(*self.BY_STATE, labels=["state"])
        for state in ("pending", "in_flight", "failed", "dead"):
            states.add_metric([state], by_state.get(state, 0))
        yield states
        yield GaugeMetricFamily(*self.OLDEST, value=oldest)
        per_minute = GaugeMetricFamily(*self.PUSHES, labels=["outcome"])
        for outcome in CrmPush.Outcome.values:
            per_minute.add_metric([outcome], pushes.get(outcome, (0, 0))[0])
        yield per_minute
        yield GaugeMetricFamily(*self.LIMITED, value=pushes.get(CrmPush.Outcome.RATE_LIMITED, (0, 0))[1])
