"""CRM sync under load: `make bench-crmsync`.

5,000 leads in one minute (open loop, CRMSYNC_RATE leads/min for
BENCH_SECONDS, after a CRMSYNC_WARMUP_SECONDS warm-up at the same rate)
against the stack of `make bench`, with CRM sync on: the
bench organization syncs to the fake HubSpot, which allows 10 requests a
second (sliding window, per token) and answers 429 with Retry-After beyond
that, after BENCH_HUBSPOT_MS (default 150) per request. Afterwards it waits
for the sync queue to drain and checks the fake CRM against PostgreSQL:
every contact there exactly once, with its latest lead status, no batch over
100, how many 429s, and the greeting's p99 for the leads submitted during
the sync (target: under 2 s).

Environment: CRMSYNC_RATE (default 5000), BENCH_SECONDS (default 60), CRMSYNC_WARMUP_SECONDS (20),
BENCH_HUBSPOT_MS (default 150), CRMSYNC_OUT (default bench/results/crmsync.json).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("BENCH_SECONDS", "60")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest  # noqa: E402
from stack import FAKE_URL, HUBSPOT_MS, ROOT, Stack, autovacuum, db_execute, db_query, prepare, stack_env  # noqa: E402

RATE = float(os.environ.get("CRMSYNC_RATE", "5000"))
OUT = Path(os.environ.get("CRMSYNC_OUT", ROOT / "bench" / "results" / "crmsync.json"))
DRAIN_TIMEOUT = 600
ORGANIZATION_CACHE_SECONDS = 11
WARMUP_SECONDS = float(os.environ.get("CRMSYNC_WARMUP_SECONDS", "20"))
GREETING_TARGET_MS = 2000


def fake_crm() -> dict:
    with urllib.request.urlopen(f"{FAKE_URL}/_fake/hubspot/contacts", timeout=30) as response:
        return json.loads(response.read())


def wait_for_sync(load_ended: float, timeout: float = DRAIN_TIMEOUT) -> float | None:
    """Seconds from the end of the load until nothing is left to push (None: gave up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = db_query("SELECT count(*) FROM crmsync_contactsync WHERE state <> 'synced' OR version > synced_version")[0][0]
        print(f"\r  contacts left to sync: {left:6d}", end="", flush=True)
        if left == 0:
            print()
            return round(time.monotonic() - load_ended, 1)
        time.sleep(1)
    print()
    return None


def check(crm: dict, since: datetime) -> dict:
    """The fake CRM against PostgreSQL for the contacts created since `since` (the measured minute;
    the fake's records were reset when it began): once each, latest status."""
    expected = dict(db_query(
        "SELECT s.id_value, (SELECT status FROM leads_lead WHERE contact_id = s.contact_id ORDER BY id DESC LIMIT 1) "
        "FROM crmsync_contactsync s JOIN leads_contact c ON c.id = s.contact_id WHERE c.created_at >= %s",
        [since],
    ))
    contacts_in_db = db_query("SELECT count(*) FROM leads_contact WHERE created_at >= %s", [since])[0][0]
    seen: dict[str, int] = {}
    stale = 0
    for record in crm["contacts"]:
        seen[record["idValue"]] = seen.get(record["idValue"], 0) + 1
        if record["idValue"] in expected and record["properties"].get("swiftex_lead_status") != expected[record["idValue"]]:
            stale += 1
    outcomes = dict(db_query("SELECT outcome, count(*) FROM crmsync_crmpush WHERE at >= %s GROUP BY outcome", [since]))
    sizes = db_query("SELECT max(items), round(avg(items)::numeric, 1) FROM crmsync_crmpush WHERE outcome = 'ok' AND at >= %s", [since])[0]
    return {
        "contacts_in_db": contacts_in_db,
        "contacts_in_crm": len(set(seen) & set(expected)),
        "lost": contacts_in_db - len(set(seen) & set(expected)),
        "duplicated": sum(n - 1 for n in seen.values() if n > 1),
        "with_stale_status": stale,
        "crm_requests": crm["stats"]["requests"],
        "crm_rate_limited_429": crm["stats"]["rate_limited"],
        "crm_max_batch": crm["stats"]["max_batch"],
        "pushes_by_outcome": outcomes,
        "accepted_batch_size": {"max": sizes[0], "mean": float(sizes[1] or 0)},
        "writes_per_contact": round(sum(r["writes"] for r in crm["contacts"]) / max(1, len(crm["contacts"])), 2),
    }


def main() -> None:
    env = stack_env() | {"HUBSPOT_ACCESS_TOKEN": "bench-hubspot-token"}  # the bench organization starts with sync on
    print(f"bench-crmsync: {RATE:.0f} leads/min for {ingest.SECONDS:.0f}s, fake HubSpot 10 req/s, {HUBSPOT_MS:g} ms a request")
    key = prepare(env)
    autovacuum()
    stack = Stack(env, ROOT / "var" / "bench-logs")
    try:
        stack.start()
        # A fresh stack's first minute is slower (empty planner statistics, cold caches,
        # lazily started pools): a short warm-up at the same rate, CRM sync on, unmeasured
        # except that its contacts must reach the CRM too.
        print("bench-crmsync: warm-up")
        ingest.run_step(stack, env, key, RATE, 60, seconds=WARMUP_SECONDS)
        autovacuum()
        # The same minute without sync first: what the greeting costs on this machine anyway.
        set_sync(False)
        print("bench-crmsync: baseline minute, CRM sync off")
        baseline = ingest.run_step(stack, env, key, RATE, 62)
        autovacuum()
        set_sync(True)
        print("bench-crmsync: measured minute, CRM sync on")
        measured_from = datetime.now(timezone.utc)
        step = ingest.run_step(stack, env, key, RATE, 61)
        load_ended = time.monotonic()
        drained = wait_for_sync(load_ended)
        result = check(fake_crm(), measured_from)
    finally:
        stack.stop()
    touch = step["first_touch"]
    p99 = (touch.get("submit_to_accepted_ms") or {}).get("p99")
    report = {
        "benchmark": "crm_sync_under_load",
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {"leads_per_min": RATE, "seconds": ingest.SECONDS, "hubspot_ms": HUBSPOT_MS, "hubspot_limit_per_second": 10},
        "verdict": {
            "all_in_crm_once_with_latest_status": result["lost"] == 0 and result["duplicated"] == 0 and result["with_stale_status"] == 0,
            "no_batch_over_100": (result["crm_max_batch"] or 0) <= 100,
            "crm_429s": result["crm_rate_limited_429"],
            "greeting_capture_to_accepted_p99_ms": p99,
            "greeting_capture_to_accepted_p99_ms_without_sync": (baseline["first_touch"].get("submit_to_accepted_ms") or {}).get("p99"),
            "greeting_within_2s": p99 is not None and p99 < GREETING_TARGET_MS,
            "greetings_lost": touch.get("lost"), "greetings_duplicated": touch.get("duplicated"),
            "seconds_to_sync_everything_after_the_load": drained,
        },
        "crm": result,
        "with_sync": ingest.step_summary(step),
        "without_sync": ingest.step_summary(baseline),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"bench-crmsync: verdict {json.dumps(report['verdict'])}\nbench-crmsync: written to {OUT}")


def set_sync(on: bool) -> None:
    db_execute("UPDATE leads_organization SET crm_adapter = %s WHERE name = 'Bench'", ["hubspot" if on else ""])
    time.sleep(ORGANIZATION_CACHE_SECONDS)  # workers read the organization through a short cache


if __name__ == "__main__":
    main()
