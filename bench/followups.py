"""Follow-ups at full load beside new leads: `make bench-followups`.

Does a follow-up lane with thousands of due follow-ups slow the first
greeting? The stack and fakes of `make bench`, a bench organization with one
follow-up step (a WhatsApp template), and FOLLOWUPS_DUE seeded leads whose
follow-up jobs are made due all at once. New leads arrive at FOLLOWUPS_RATE
leads/min (open loop) throughout, in alternating phases:

  baseline  - no follow-up due;
  followups - FOLLOWUPS_DUE follow-ups fall due at the phase's start.

Baseline and follow-up phases alternate FOLLOWUPS_ROUNDS times, so a drift
of this shared machine between phases does not pass for an effect. Each
phase reports the greeting's submit -> provider-accepted p50/p95/p99 (as in
`make bench`), the follow-ups sent, and CPU per process type. Follow-ups
left when a phase ends are cancelled, so the next baseline is clean.
Target: the follow-up phases' first-greeting p99 within 10% of the baselines'.

Environment: FOLLOWUPS_RATE (default 5000), FOLLOWUPS_DUE (default 5000),
FOLLOWUPS_ROUNDS (default 2), BENCH_SECONDS per phase (default 45),
FOLLOWUPS_OUT (default bench/results/followups.json).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

os.environ.setdefault("BENCH_SECONDS", "45")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest  # noqa: E402
from stack import ROOT, Stack, autovacuum, db_execute, db_query, prepare, stack_env  # noqa: E402

RATE = float(os.environ.get("FOLLOWUPS_RATE", "5000"))
DUE = int(os.environ.get("FOLLOWUPS_DUE", "5000"))
ROUNDS = int(os.environ.get("FOLLOWUPS_ROUNDS", "2"))
OUT = Path(os.environ.get("FOLLOWUPS_OUT", ROOT / "bench" / "results" / "followups.json"))
TARGET_RATIO = 1.10
SEED_SOURCE = "followup-seed"


def seed(org_id: int, step_id: int, batch: int) -> None:
    """DUE greeted leads with a pending follow-up each, due far ahead (made due per phase)."""
    db_execute(
        f"""
        WITH c AS (
            INSERT INTO leads_contact (organization_id, name, phone, email, consent, consent_at, created_at, updated_at)
            SELECT %(org)s, 'Seed ' || n, '+1628' || lpad(((%(batch)s * 1000000 + n) %% 10000000)::text, 7, '0'), NULL, true, now(), now(), now()
            FROM generate_series(1, %(due)s) AS n
            RETURNING id
        ), l AS (
            INSERT INTO leads_lead (organization_id, contact_id, status, source, campaign, routing, captured_at, first_response_at, created_at)
            SELECT %(org)s, id, 'contacted', '{SEED_SOURCE}-{batch}', '', '{{}}'::jsonb, now(), now(), now() FROM c
            RETURNING id
        )
        INSERT INTO conversations_scheduledjob (organization_id, lead_id, kind, step_id, due_at, status, attempts, reason, created_at)
        SELECT %(org)s, id, 'followup', %(step)s, now() + interval '30 days', 'pending', 0, '', now() - interval '1 day' FROM l
        """,
        {"org": org_id, "step": step_id, "due": DUE, "batch": batch},
    )


def make_due(batch: int) -> None:
    db_execute(
        "UPDATE conversations_scheduledjob j SET due_at = now() FROM leads_lead l "
        "WHERE l.id = j.lead_id AND l.source = %s AND j.status = 'pending'",
        [f"{SEED_SOURCE}-{batch}"],
    )


def finish_followups(batch: int) -> dict:
    """Cancel what is still pending and wait for what is in flight; the phase's tally."""
    db_execute(
        "UPDATE conversations_scheduledjob j SET status = 'cancelled', reason = 'bench phase over' FROM leads_lead l "
        "WHERE l.id = j.lead_id AND l.source = %s AND j.status = 'pending'",
        [f"{SEED_SOURCE}-{batch}"],
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and db_query(
        "SELECT count(*) FROM conversations_scheduledjob WHERE status IN ('enqueued', 'running') AND kind = 'followup'"
    )[0][0]:
        time.sleep(1)
    rows = db_query(
        "SELECT j.status, count(*) FROM conversations_scheduledjob j JOIN leads_lead l ON l.id = j.lead_id "
        "WHERE l.source = %s GROUP BY j.status",
        [f"{SEED_SOURCE}-{batch}"],
    )
    doubled = db_query(
        "SELECT count(*) FROM (SELECT scheduled_job_id FROM conversations_message WHERE scheduled_job_id IS NOT NULL "
        "GROUP BY scheduled_job_id HAVING count(*) > 1) d"
    )[0][0]
    return {"jobs": dict(rows), "messages_doubled": doubled}


def followups_sent(started: datetime) -> dict:
    """Follow-ups done while new leads arrived (the load window), and after it while the phase settled."""
    during, after = db_query(
        "SELECT count(*) FILTER (WHERE finished_at < %(end)s), count(*) FILTER (WHERE finished_at >= %(end)s) "
        "FROM conversations_scheduledjob WHERE kind = 'followup' AND status = 'done' AND finished_at >= %(start)s",
        {"start": started, "end": started + timedelta(seconds=ingest.SECONDS)},
    )[0]
    return {"while_leads_arrive": during, "per_second_while_leads_arrive": round(during / ingest.SECONDS, 1),
            "after_the_load": after}


def setup_org() -> tuple[int, int]:
    org_id = db_query("SELECT id FROM leads_organization WHERE name = 'Bench'")[0][0]
    # Follow-ups at any hour: the bench runs whenever it runs.
    db_execute("UPDATE leads_organization SET quiet_hours_enabled = false, inactivity_timeout_hours = 0 WHERE id = %s", [org_id])
    seq_id = db_query(
        "INSERT INTO conversations_followupsequence (organization_id, name, active, created_at) VALUES (%s, 'Bench nurture', true, now()) RETURNING id",
        [org_id],
    )[0][0]
    step_id = db_query(
        "INSERT INTO conversations_followupstep (sequence_id, position, delay_minutes, channel, text, use_ai, template_name, template_language) "
        "VALUES (%s, 1, 1440, 'whatsapp', 'Still looking, {first_name}?', false, 'lead_followup', 'en_US') RETURNING id",
        [seq_id],
    )[0][0]
    return org_id, step_id


def phase_summary(kind: str, step: dict, followups: dict | None, sent_during: int | None) -> dict:
    touch = step["first_touch"]
    return {
        "phase": kind,
        "greeting_submit_to_accepted_ms": touch.get("submit_to_accepted_ms"),
        "greeting_overhead_ms": touch.get("overhead_ms"),
        "lost": touch.get("lost"), "duplicated": touch.get("duplicated"),
        "ingest_latency_ms": step["ingest_latency_ms"],
        "followups_sent_during_phase": sent_during,
        "followups": followups,
        "processes": step["processes"],
    }


def main() -> None:
    env = stack_env()
    print(f"bench-followups: {ROUNDS} rounds of baseline / {DUE} due follow-ups at {RATE:.0f} leads/min, {ingest.SECONDS:.0f}s each")
    key = prepare(env)
    org_id, step_id = setup_org()
    for batch in range(1, ROUNDS + 1):
        seed(org_id, step_id, batch)
    autovacuum()
    stack = Stack(env, ROOT / "var" / "bench-logs")
    phases = []
    try:
        stack.start()
        run_id = 40
        for batch in range(1, ROUNDS + 1):
            for kind in ("baseline", "followups"):
                run_id += 1
                print(f"bench-followups: round {batch}, {kind}")
                started = datetime.now(timezone.utc)
                if kind == "followups":
                    make_due(batch)
                step = ingest.run_step(stack, env, key, RATE, run_id)
                sent = None
                tally = None
                if kind == "followups":
                    sent = followups_sent(started)
                    tally = finish_followups(batch)
                phases.append(phase_summary(kind, step, tally, sent))
                print(f"  greeting p99 {step['first_touch'].get('submit_to_accepted_ms', {}).get('p99')} ms; follow-ups sent {sent}")
                autovacuum()
    finally:
        stack.stop()
    report = {
        "benchmark": "followups_beside_first_touch",
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {"leads_per_min": RATE, "due_followups_per_phase": DUE, "rounds": ROUNDS, "seconds_per_phase": ingest.SECONDS},
        "verdict": verdict(phases),
        "phases": phases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"bench-followups: verdict {json.dumps(report['verdict'])}\nbench-followups: written to {OUT}")


def verdict(phases: list[dict]) -> dict:
    def p99s(kind: str) -> list[float]:
        return [p["greeting_submit_to_accepted_ms"]["p99"] for p in phases if p["phase"] == kind and p["greeting_submit_to_accepted_ms"]]

    base, loaded = p99s("baseline"), p99s("followups")
    if not base or not loaded:
        return {"measured": False}
    ratio = (sum(loaded) / len(loaded)) / (sum(base) / len(base))
    return {
        "greeting_p99_ms_baseline": base,
        "greeting_p99_ms_with_followups": loaded,
        "ratio_of_means": round(ratio, 3),
        "within_10_percent": ratio <= TARGET_RATIO,
        "followups_sent": [p["followups_sent_during_phase"] for p in phases if p["phase"] == "followups"],
        "lost": sum(p["lost"] or 0 for p in phases), "duplicated": sum(p["duplicated"] or 0 for p in phases),
        "followup_messages_doubled": max((p["followups"] or {}).get("messages_doubled", 0) for p in phases),
    }


if __name__ == "__main__":
    main()
