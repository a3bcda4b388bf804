"""Analytics at volume: the dashboard's queries over a million leads, and the consumer's throughput.

    .venv/bin/python bench/analytics.py      (or `make bench-analytics`)

1. Seeds ANALYTICS_LEADS leads (default 1,000,000) over 30 days into a fresh
   bench database, with their facts and hourly roll-ups, then times every
   dashboard query (median of 5) for a 1-, 7- and 30-day range.
2. Seeds ANALYTICS_EVENTS fresh leads (default 20,000) with a delivered
   greeting each and feeds their `lead.created` events to the analytics
   subscriber in batches of 100, as the bulk lane does: events per second,
   and statements per batch.

Writes bench/results/analytics.json. Runs in-process against PostgreSQL; no
web or workers are started.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from stack import ROOT, autovacuum, db_execute, prepare, stack_env  # noqa: E402

LEADS = int(os.environ.get("ANALYTICS_LEADS", "1000000"))
EVENTS = int(os.environ.get("ANALYTICS_EVENTS", "20000"))
BATCH = 100
REPEATS = 5
OUT = Path(os.environ.get("ANALYTICS_OUT", ROOT / "bench" / "results" / "analytics.json"))


def seed_history(org_id: int) -> None:
    """LEADS leads over the last 30 days, answered in ~1 s (a long tail, 3% never), their facts and roll-ups."""
    db_execute(
        """
        WITH c AS (
            INSERT INTO leads_contact (organization_id, name, phone, email, consent, consent_at, created_at, updated_at)
            SELECT %(org)s, 'Seed ' || n, '+1629' || lpad(n::text, 7, '0'), NULL, true, now(), now(), now()
            FROM generate_series(1, %(n)s) AS n
            RETURNING id
        )
        INSERT INTO leads_lead (organization_id, contact_id, status, source, campaign, routing, captured_at, first_response_at, created_at)
        SELECT %(org)s, id, 'contacted', (ARRAY['website', 'google-ads', 'partner', 'meta'])[1 + id %% 4],
               'campaign-' || (id %% 6), '{}'::jsonb, at,
               CASE WHEN random() > 0.03 THEN at + make_interval(secs => 0.6 + random() * 0.8 + CASE WHEN random() < 0.02 THEN random() * 60 ELSE 0 END) END,
               at
        FROM (SELECT id, now() - random() * interval '30 days' AS at FROM c) AS timed
        """,
        {"org": org_id, "n": LEADS},
    )
    db_execute(
        """
        INSERT INTO analytics_leadfact (lead_id, organization_id, source, campaign, status, captured_at, first_response_at,
            first_response_ms, channel, delivered_at, read_at, replied_at, qualified_at, rep_id, rep_acted_at, updated_at)
        SELECT id, organization_id, source, campaign, status, captured_at, first_response_at,
               (EXTRACT(EPOCH FROM first_response_at - captured_at) * 1000)::int,
               CASE WHEN first_response_at IS NULL THEN '' WHEN id %% 9 = 0 THEN 'sms' ELSE 'whatsapp' END,
               CASE WHEN id %% 10 <> 0 THEN first_response_at + interval '2 seconds' END,
               CASE WHEN id %% 3 = 0 THEN first_response_at + interval '1 minute' END,
               CASE WHEN id %% 4 = 0 THEN first_response_at + interval '5 minutes' END,
               CASE WHEN id %% 11 = 0 THEN first_response_at + interval '1 day' END, NULL, NULL, now()
        FROM leads_lead WHERE organization_id = %(org)s
        """,
        {"org": org_id},
    )
    db_execute(
        """
        INSERT INTO analytics_hourlystat (organization_id, source, campaign, hour, leads, greeted, delivered, read, replied,
            qualified, within_5s, within_60s, within_5m, response_ms_sum)
        SELECT organization_id, source, campaign, date_trunc('hour', captured_at), count(*), count(first_response_ms),
               count(delivered_at), count(read_at), count(replied_at), count(qualified_at),
               count(*) FILTER (WHERE first_response_ms <= 5000), count(*) FILTER (WHERE first_response_ms <= 60000),
               count(*) FILTER (WHERE first_response_ms <= 300000), COALESCE(sum(first_response_ms), 0)
        FROM analytics_leadfact WHERE organization_id = %(org)s GROUP BY 1, 2, 3, 4
        """,
        {"org": org_id},
    )


def seed_fresh(org_id: int) -> list[int]:
    """EVENTS new leads with a delivered WhatsApp greeting each, not yet in analytics."""
    db_execute(
        """
        WITH c AS (
            INSERT INTO leads_contact (organization_id, name, phone, email, consent, consent_at, created_at, updated_at)
            SELECT %(org)s, 'Fresh ' || n, '+1630' || lpad(n::text, 7, '0'), NULL, true, now(), now(), now()
            FROM generate_series(1, %(n)s) AS n RETURNING id
        ), l AS (
            INSERT INTO leads_lead (organization_id, contact_id, status, source, campaign, routing, captured_at, first_response_at, created_at)
            SELECT %(org)s, id, 'contacted', 'fresh', '', '{}'::jsonb, now(), now() + interval '900 milliseconds', now() FROM c
            RETURNING id, contact_id
        ), conv AS (
            INSERT INTO conversations_conversation (organization_id, contact_id, channel, created_at)
            SELECT %(org)s, contact_id, 'whatsapp', now() FROM l RETURNING id, contact_id
        )
        INSERT INTO conversations_message (organization_id, conversation_id, lead_id, direction, channel, body, template_name,
            status, attempts, error_code, error_title, created_at, accepted_at, delivered_at)
        SELECT %(org)s, conv.id, l.id, 'outbound', 'whatsapp', 'Hi', '', 'delivered', 1, '', '', now(),
               now() + interval '900 milliseconds', now() + interval '2 seconds'
        FROM l JOIN conv USING (contact_id)
        """,
        {"org": org_id, "n": EVENTS},
    )
    from leads.models import Lead

    return list(Lead.objects.filter(organization_id=org_id, source="fresh").order_by("pk").values_list("pk", flat=True))


def timed(call) -> float:
    """Median milliseconds of REPEATS calls."""
    samples = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 1)


def dashboard_timings(org) -> dict:
    from analytics import selectors

    results = {}
    for days in (1, 7, 30):
        today = datetime.now(timezone.utc).date()
        rng = selectors.date_range(org, (today - timedelta(days=days - 1)).isoformat(), today.isoformat())
        queries = {
            "summary": lambda: selectors.summary(org, rng),
            "histogram": lambda: selectors.histogram(org, rng),
            "trend": lambda: selectors.trend(org, rng),
            **{f"by_{name}": (lambda name=name: selectors.breakdown(org, rng, name)) for name in selectors.BREAKDOWNS},
            "breaches": lambda: selectors.breaches(org, rng),
        }
        timings = {name: timed(call) for name, call in queries.items()}
        timings["page_total"] = round(sum(timings.values()), 1)
        results[f"{days}_days"] = {"leads_in_range": selectors.summary(org, rng)["leads"], "ms": timings}
        print(f"  {days:>2} days: {results[f'{days}_days']['leads_in_range']:>9} leads: {timings}", flush=True)
    return results


def consumer_throughput(lead_ids: list[int]) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from analytics.subscriber import handle_events

    per_batch, statements = [], 0
    started = time.perf_counter()
    for offset in range(0, len(lead_ids), BATCH):
        events = [{"id": str(uuid.uuid4()), "type": "lead.created", "data": {"lead_id": pk}} for pk in lead_ids[offset:offset + BATCH]]
        t0 = time.perf_counter()
        with CaptureQueriesContext(connection) as queries:
            handle_events(events)
        per_batch.append((time.perf_counter() - t0) * 1000)
        statements = max(statements, sum(not (q["sql"] or "").startswith(("SAVEPOINT", "RELEASE")) for q in queries.captured_queries))
    elapsed = time.perf_counter() - started
    return {
        "events": len(lead_ids), "batch": BATCH, "events_per_second": round(len(lead_ids) / elapsed),
        "batch_ms_p50": round(statistics.median(per_batch), 1),
        "batch_ms_p99": round(sorted(per_batch)[int(len(per_batch) * 0.99) - 1], 1),
        "statements_per_batch": statements,
    }


def main() -> None:
    env = stack_env()
    print(f"preparing the bench database; seeding {LEADS:,} leads over 30 days", flush=True)
    prepare(env)
    os.environ.update(env)
    import django

    django.setup()
    from leads.models import Organization

    org = Organization.objects.get(name="Bench")
    started = time.perf_counter()
    seed_history(org.pk)
    lead_ids = seed_fresh(org.pk)
    autovacuum()
    print(f"seeded in {time.perf_counter() - started:.0f} s; timing the dashboard", flush=True)
    report = {
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seeded_leads": LEADS,
        "dashboard": dashboard_timings(org),
    }
    print(f"feeding {len(lead_ids):,} lead.created events to the analytics subscriber", flush=True)
    report["consumer"] = consumer_throughput(lead_ids)
    print(f"  {report['consumer']}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
