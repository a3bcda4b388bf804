"""Live leads during a CSV import: `make bench-imports`.

Against the stack of `make bench`: a warm-up, then a minute of live leads
(open loop, IMPORTS_LIVE_RATE leads/min) with nothing else going on, then the
same minute while a IMPORTS_ROWS-row list (1 row in 20 bad) imports on the
bulk lane at the default pace (IMPORT_ROWS_PER_SECOND). Reports the live
leads' submit -> greeting-accepted percentiles in both minutes (target p99
under 2 s), lost / duplicated greetings, the import's rows/s, how long it
took, that every bad row was reported and no imported lead was messaged.

Environment: IMPORTS_LIVE_RATE (default 1000), IMPORTS_ROWS (default 10000),
BENCH_SECONDS (default 60), IMPORTS_OUT (default bench/results/imports.json).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("BENCH_SECONDS", "60")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest  # noqa: E402
from stack import PY, ROOT, Stack, autovacuum, db_query, prepare, stack_env  # noqa: E402

LIVE_RATE = float(os.environ.get("IMPORTS_LIVE_RATE", "1000"))
ROWS = int(os.environ.get("IMPORTS_ROWS", "10000"))
OUT = Path(os.environ.get("IMPORTS_OUT", ROOT / "bench" / "results" / "imports.json"))
IMPORT_TIMEOUT = 900
GREETING_TARGET_MS = 2000


def write_list(path: Path) -> int:
    """The list: ROWS rows (New York numbers, apart from the live leads' 415 ones), one in 20 with a
    phone no country has; returns how many are bad."""
    bad = 0
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["Name", "Phone", "Email", "Opt-in", "Company"])
        for n in range(ROWS):
            good = n % 20 != 0
            bad += not good
            phone = f"+1212{200 + (n // 10_000) % 800:03d}{n % 10_000:04d}" if good else "12345"
            writer.writerow([f"Listed {n}", phone, f"listed{n}@example.com", "yes", "ACME"])
    return bad


def start_import(env: dict, path: Path) -> int:
    out = subprocess.run([PY, "manage.py", "import_leads", str(path), "--organization", "Bench", "--source", "expo"],
                         cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def import_state(import_id: int) -> dict:
    status, cursor, total, created, existing, invalid, created_at, heartbeat = db_query(
        "SELECT status, cursor, rows_total, created_leads, existing_leads, invalid_rows, created_at, heartbeat_at "
        "FROM imports_leadimport WHERE id = %s", [import_id])[0]
    return {"status": status, "cursor": cursor, "rows_total": total, "created_leads": created, "existing_leads": existing,
            "invalid_rows": invalid, "created_at": created_at, "heartbeat_at": heartbeat}


def wait_done(import_id: int) -> dict:
    deadline = time.monotonic() + IMPORT_TIMEOUT
    while time.monotonic() < deadline:
        state = import_state(import_id)
        print(f"\r  import: {state['status']} {state['cursor']}/{state['rows_total']}", end="", flush=True)
        if state["status"] == "done":
            break
        time.sleep(1)
    print()
    return state


def main() -> None:
    env = stack_env()
    print(f"bench-imports: live leads at {LIVE_RATE:.0f}/min for {ingest.SECONDS:.0f}s, alone and during a {ROWS:,}-row import")
    key = prepare(env)
    autovacuum()
    list_file = Path(tempfile.mkstemp(suffix=".csv")[1])
    bad_rows = write_list(list_file)
    stack = Stack(env, ROOT / "var" / "bench-logs")
    try:
        stack.start()
        print("bench-imports: warm-up")
        ingest.run_step(stack, env, key, LIVE_RATE, 70, seconds=20)
        autovacuum()
        print("bench-imports: live leads alone")
        alone = ingest.run_step(stack, env, key, LIVE_RATE, 71)
        import_id = start_import(env, list_file)
        print(f"bench-imports: live leads during import {import_id}")
        during = ingest.run_step(stack, env, key, LIVE_RATE, 72)
        state = wait_done(import_id)
    finally:
        stack.stop()
        list_file.unlink()
    reported = db_query("SELECT count(*) FROM imports_rowerror WHERE lead_import_id = %s", [import_id])[0][0]
    messaged = db_query("SELECT count(*) FROM conversations_message m JOIN leads_lead l ON l.id = m.lead_id WHERE l.imported")[0][0]
    took = (state["heartbeat_at"] - state["created_at"]).total_seconds() if state["heartbeat_at"] else None
    p99 = lambda step: (step["first_touch"].get("submit_to_accepted_ms") or {}).get("p99")  # noqa: E731
    report = {
        "benchmark": "live_leads_during_csv_import",
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {"live_leads_per_min": LIVE_RATE, "seconds": ingest.SECONDS, "rows": ROWS, "bad_rows": bad_rows},
        "verdict": {
            "live_greeting_p99_ms_alone": p99(alone),
            "live_greeting_p99_ms_during_import": p99(during),
            "live_greeting_p99_under_2s_during_import": p99(during) is not None and p99(during) < GREETING_TARGET_MS,
            "live_greetings_lost": during["first_touch"].get("lost"),
            "live_greetings_duplicated": during["first_touch"].get("duplicated"),
            "import_done": state["status"] == "done",
            "every_bad_row_reported": reported == bad_rows,
            "imported_leads_messaged": messaged,
            "import_seconds": round(took, 1) if took else None,
            "import_rows_per_second": round(ROWS / took, 1) if took else None,
        },
        "import": {k: v for k, v in state.items() if k not in ("created_at", "heartbeat_at")} | {"row_errors": reported},
        "alone": ingest.step_summary(alone),
        "during_import": ingest.step_summary(during),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"bench-imports: verdict {json.dumps(report['verdict'])}\nbench-imports: written to {OUT}")


if __name__ == "__main__":
    main()
