"""Ingest and first-touch benchmark: `make bench`.

Starts the stack (web, relay, worker lanes, scheduler) and the fake provider
server against a fresh bench database, then for each rate step drives an
open-loop load generator in a separate process and records: POST
/api/v1/leads latency percentiles, achieved throughput, outbox backlog over
time (does it grow?), capture -> first-touch pickup latency, queue depths,
peak RSS / CPU per process type, and, once the step's greetings settled, the
first touch end to end (bench/first_touch.py): submit -> provider-accepted,
overhead over the fakes' delay, where the time goes, lost / duplicated.

Environment: BENCH_RATES (leads/min, comma-separated; default
1000,5000,10000,20000), BENCH_SECONDS per step (default 60), BENCH_OUT
(default bench/results/ingest.json; the charts go next to it), BENCH_SETTLE_SECONDS
(bound on waiting for a step's greetings, default 60), and the fakes'
latencies BENCH_MODEL_MS / BENCH_WHATSAPP_MS / BENCH_SMS_MS (400 / 150 / 150).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chart  # noqa: E402
import first_touch  # noqa: E402
from first_touch import percentile  # noqa: E402
from loadgen import phone_for  # noqa: E402
from stack import MODEL_MS, PORT, PY, ROOT, SMS_MS, WHATSAPP_MS, Autovacuum, Stack, autovacuum, db_query, machine_speed_ms, prepare, queue_depths, stack_env  # noqa: E402

RATES = [float(r) for r in os.environ.get("BENCH_RATES", "1000,5000,10000,20000").split(",")]
SECONDS = float(os.environ.get("BENCH_SECONDS", "60"))
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "results" / "ingest.json"))
DRAIN_TIMEOUT = 60.0
SETTLE_TIMEOUT = float(os.environ.get("BENCH_SETTLE_SECONDS", "60"))
QUEUES = ["first_touch", "conversations.events", "analytics.events", "crmsync.events"]


def summarize_ms(values_s: list[float]) -> dict:
    values = sorted(v * 1000 for v in values_s)
    return {f"p{p}": round(percentile(values, p), 1) if values else None for p in (50, 95, 99)} | {
        "max": round(values[-1], 1) if values else None,
        "count": len(values),
    }


def outbox_backlog() -> int:
    return db_query("SELECT count(*) FROM swiftex_outboxevent WHERE published_at IS NULL")[0][0]


def run_step(stack: Stack, env: dict, key: str, rate: float, run_id: int, seconds: float = SECONDS) -> dict:
    out_file = Path(tempfile.mkstemp(suffix=".json")[1])
    first_touch.reset_fake()  # the previous step settled: its records and webhooks are no longer needed
    speed_ms = machine_speed_ms()  # the machine's phase, with the stack idle (bench/README.md)
    metrics_before = first_touch.web_metrics()
    step_started = datetime.now(timezone.utc)
    wal_at_start = db_query("SELECT pg_current_wal_lsn()::text")[0][0]
    started = time.monotonic()
    loadgen = subprocess.Popen(
        [PY, str(ROOT / "bench" / "loadgen.py"), "--url", f"http://127.0.0.1:{PORT}", "--key", key,
         "--rate", str(rate), "--seconds", str(seconds), "--run-id", str(run_id), "--out", str(out_file), "--progress"],
    )
    stack.begin_sampling({"loadgen": lambda: [loadgen.pid]})
    backlog_series = []
    depth_series = []
    with Autovacuum():  # as autovacuum would during the step (it is off on this machine)
        while loadgen.poll() is None:
            time.sleep(1.0)
            stack.sample()
            backlog_series.append(outbox_backlog())
            depth_series.append({name: depth for name, (depth, _) in queue_depths(env, QUEUES).items()})
    load_elapsed = time.monotonic() - started
    usage = stack.usage(load_elapsed)
    backlog_at_end = outbox_backlog()

    drain_started = time.monotonic()
    while time.monotonic() - drain_started < DRAIN_TIMEOUT:
        depths = queue_depths(env, QUEUES)
        if outbox_backlog() == 0 and all(d == 0 for d, _ in depths.values()):
            break
        time.sleep(0.5)
    drain_s = time.monotonic() - drain_started

    result = json.loads(out_file.read_text())
    out_file.unlink()
    print("  waiting for the step's greetings to settle ...", flush=True)
    settle = first_touch.wait_settled(step_started, SETTLE_TIMEOUT)
    touch = {"settle": settle} | first_touch.measure(step_started, result, phone_for, run_id)
    touch |= first_touch.web_handling(metrics_before, first_touch.web_metrics())
    ok = sum(n for status, n in result["statuses"].items() if status.startswith("2"))
    pickup = db_query(
        # Pickup minus capture: `since_capture_ms` (called `waited_ms` before the greeting was built).
        "SELECT COALESCE(e.data->>'since_capture_ms', e.data->>'waited_ms')::float FROM leads_leadevent e JOIN leads_lead l ON l.id = e.lead_id "
        "WHERE e.kind = 'first_touch.started' AND l.captured_at >= %s AND NOT l.imported",
        [step_started],
    )
    leads_created = db_query("SELECT count(*) FROM leads_lead WHERE captured_at >= %s AND NOT imported", [step_started])[0][0]
    # What the step wrote to PostgreSQL's WAL, the load and its settling (the whole cluster:
    # nothing else runs during a bench): what a replica or an archive must carry per lead.
    wal_bytes = db_query("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", [wal_at_start])[0][0]
    first_touches = len(pickup)
    return {
        "target_leads_per_min": rate,
        "duration_s": round(result["elapsed_s"], 1),
        "machine_speed_ms_before": speed_ms,
        "requests": result["requests"],
        "statuses": result["statuses"],
        "client_errors": result["errors"],
        "achieved_2xx_per_min": round(ok / result["elapsed_s"] * 60),
        "ingest_latency_ms": summarize_ms(result["latencies_s"]),
        "capture_to_first_touch_pickup_ms": summarize_ms([v / 1000 for v in sorted(v for (v,) in pickup)]),
        "leads_created": leads_created,
        "first_touch_picked_up": first_touches,
        "wal_bytes_per_lead": round(float(wal_bytes) / leads_created) if leads_created else None,
        "outbox_backlog": {
            "max_during_load": max(backlog_series, default=0),
            "at_end_of_load": backlog_at_end,
            "samples_per_second": backlog_series,
        },
        "queue_depth_max": {name: max((s[name] for s in depth_series), default=0) for name in QUEUES},
        "drain_s_after_load": round(drain_s, 1),
        "processes": usage,
        "first_touch": touch,
    }


def step_summary(step: dict) -> dict:
    """A step for a report: the greeting server side (capture -> accepted) and client side (the
    scheduled send -> accepted, which includes waiting for the web), overhead, ingest, CPU."""
    touch = step["first_touch"]
    return {
        "greeting_capture_to_accepted_ms": touch.get("submit_to_accepted_ms"),
        "greeting_client_send_to_accepted_ms": touch.get("client_submit_to_accepted_ms"),
        "overhead_ms": touch.get("overhead_ms"),
        "lost": touch.get("lost"), "duplicated": touch.get("duplicated"),
        **{k: step[k] for k in ("achieved_2xx_per_min", "ingest_latency_ms", "statuses", "client_errors", "processes")},
    }


def verdict(steps: list[dict]) -> dict:
    def sustained(step: dict) -> bool:
        # Kept up: every request answered 2xx, at >= 98% of the target rate, and
        # the outbox backlog at the end of the step no larger than ~2 s of traffic.
        non_2xx = sum(n for s, n in step["statuses"].items() if not s.startswith("2")) + sum(step["client_errors"].values())
        return (
            non_2xx == 0
            and step["achieved_2xx_per_min"] >= 0.98 * step["target_leads_per_min"]
            and step["outbox_backlog"]["at_end_of_load"] <= step["target_leads_per_min"] / 30
        )

    at_5k = next((s for s in steps if s["target_leads_per_min"] == 5000), None)
    touch = at_5k["first_touch"] if at_5k else None
    accepted_p99 = touch["submit_to_accepted_ms"]["p99"] if touch else None
    overhead_p99 = touch["overhead_ms"]["p99"] if touch else None
    return {
        "p99_ms_at_5000_per_min": at_5k["ingest_latency_ms"]["p99"] if at_5k else None,
        "p99_under_50ms_at_5000_per_min": bool(at_5k and at_5k["ingest_latency_ms"]["p99"] < 50),
        "max_sustained_leads_per_min": max((s["target_leads_per_min"] for s in steps if sustained(s)), default=0),
        "first_touch_at_5000_per_min": {
            "submit_to_accepted_p99_ms": accepted_p99,
            "submit_to_accepted_p99_under_2s": accepted_p99 is not None and accepted_p99 < 2000,
            "overhead_p99_ms": overhead_p99,
            "overhead_p99_under_150ms": overhead_p99 is not None and overhead_p99 < 150,
            "lost": touch["lost"] if touch else None,
            "duplicated": touch["duplicated"] if touch else None,
        },
    }


def cpu_summary(processes: dict) -> str:
    """Swiftex (web, lanes + relay + scheduler), the services, then load-side cost (loadgen, fakes)."""
    cpu = {name: p["cpu_share_of_one_core"] for name, p in processes.items() if "cpu_share_of_one_core" in p}
    lanes = sum(cpu.get(name, 0) for name in ("first_touch", "conversations", "bulk", "relay", "scheduler"))
    return "/".join(
        f"{v:.2f}" for v in (cpu.get("web", 0), lanes, cpu.get("postgres", 0), cpu.get("rabbitmq", 0), cpu.get("loadgen", 0), cpu.get("fakes", 0),
                             processes.get("machine", {}).get("busy_cores") or 0)
    )


def print_table(steps: list[dict]) -> None:
    print(f"\n{'leads/min':>10} {'2xx/min':>8} {'p50':>7} {'p95':>7} {'p99':>7} {'backlog max/end':>16} {'pickup p99':>11} {'CPU web/lanes/pg/mq/loadgen/fakes/machine':>41}")
    for s in steps:
        lat = s["ingest_latency_ms"]
        print(
            f"{s['target_leads_per_min']:>10.0f} {s['achieved_2xx_per_min']:>8} {lat['p50']:>7} {lat['p95']:>7} {lat['p99']:>7} "
            f"{s['outbox_backlog']['max_during_load']:>8}/{s['outbox_backlog']['at_end_of_load']:<7} "
            f"{s['capture_to_first_touch_pickup_ms']['p99']!s:>11} {cpu_summary(s['processes']):>41}"
        )
    print(f"{'first touch':>10} {'accepted p50/p95/p99 ms':>26} {'overhead p50/p95/p99 ms':>26} {'client p99':>10} "
          f"{'template':>8} {'lost/dup':>8} {'sms':>5} {'unsettled':>9}")
    for s in steps:
        t = s["first_touch"]
        acc, over = t["submit_to_accepted_ms"], t["overhead_ms"]
        print(
            f"{s['target_leads_per_min']:>10.0f} {acc['p50']!s:>8}/{acc['p95']!s}/{acc['p99']!s:<8} {over['p50']!s:>8}/{over['p95']!s}/{over['p99']!s:<8} "
            f"{t['client_submit_to_accepted_ms']['p99']!s:>10} {t['template_fallbacks']:>8} {t['lost']:>4}/{t['duplicated']:<3} "
            f"{t['fake']['sms_accepted']:>5} {t['settle']['unsettled_leads']:>9}"
        )


def main() -> None:
    env = stack_env()
    print(f"bench: preparing a fresh database; steps {RATES} leads/min x {SECONDS:.0f}s")
    key = prepare(env)
    stack = Stack(env, ROOT / "var" / "bench-logs")
    steps = []
    try:
        stack.start()
        print("bench: stack ready")
        for run_id, rate in enumerate(RATES, start=1):
            print(f"bench: step {run_id}/{len(RATES)} at {rate:.0f} leads/min")
            steps.append(run_step(stack, env, key, rate, run_id))
            print(f"  machine speed before the step: {steps[-1]['machine_speed_ms_before']} ms (lower is faster)")
            print_table(steps[-1:])
            autovacuum()  # statistics and dead rows, as autovacuum would (it is off on this machine)
        tally = first_touch.whole_run_tally()
    finally:
        stack.stop()
    report = {
        "benchmark": "ingest+first_touch",
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {
            "rates": RATES, "seconds_per_step": SECONDS, "web_workers": env.get("WEB_WORKERS", "2"), "web_threads": env.get("WEB_THREADS", "4"),
            "web_switch_interval_ms": env.get("WEB_SWITCH_INTERVAL_MS", "1"),
            "fake_latency_ms": {"model": MODEL_MS, "whatsapp": WHATSAPP_MS, "sms": SMS_MS},
        },
        "verdict": verdict(steps),
        "first_touch_whole_run": tally,
        "steps": steps,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    for name, svg in (("ingest-latency.svg", chart.render(report)), ("first-touch-latency.svg", chart.render_first_touch(report))):
        (OUT.parent / name).write_text(svg)
    chart.render_png(report, OUT.parent / "latency.png")
    print_table(steps)
    print(f"\nbench: first touch over the whole run {json.dumps(tally)}")
    print(f"bench: verdict {json.dumps(report['verdict'])}\nbench: written to {OUT}")


if __name__ == "__main__":
    main()
