"""Chaos run: `make chaos`. Faults during a steady 5,000 leads/min; nothing may be lost or doubled.

The whole stack (as in `make bench`, bench/stack.py) runs against the fake
providers, with a Redis of its own (127.0.0.1:6391, `CHAOS_REDIS_PORT`) so
stopping it touches nothing else. One open-loop load generator runs for the
whole time; after a warm-up, each fault gets a slot of CHAOS_SLOT_SECONDS
(90): 10 s of calm (what was under way settles), then the fault is
injected, cleared, and recovered from:

- kill_first_touch: SIGKILL the first-touch worker (pool and all), restarted
  2 s later as a supervisor would;
- deploy: a rolling SIGTERM restart of every process: each gunicorn worker in
  turn (the master respawns it; the other keeps serving), then each lane,
  the relay and the scheduler (new one started, old one SIGTERMed);
- rabbitmq_restart: `rabbitmqctl stop_app`, 10 s, `start_app` (this is the
  machine's RabbitMQ: every vhost on it is down for those seconds);
- redis_restart: the stack's Redis shut down, 10 s, started again;
- whatsapp_500: 10% of WhatsApp calls answer 500 for 30 s;
- hubspot_429: the fake HubSpot answers every request 429 (Retry-After: 1)
  for 60 s.

CRM sync is on throughout (the bench organization syncs to the fake
HubSpot, 10 requests/s): after the greetings settle the run waits for the
sync queue to drain and checks every stored contact is in the CRM once,
with its latest lead status.

After the load, it waits (bounded) until every lead's greeting is final, then
reads, per slot: requests answered 2xx, leads greeted exactly once, lost (2xx
but never greeted, or not stored at all), duplicated (more than one message
accepted by the fakes), the first-message p99 (client's scheduled send →
provider accepted) during the fault (leads sent from 2 s before it, still in
flight when it hit, until it cleared) and after it, and time to recover (from
the fault's end until every later 5 s of the slot has its p99 under 2 s).
A stored lead that was never greeted is lost whatever the client was told.
Target: 0 lost, 0 duplicated in every slot. Also per slot: the CPU share of
every process type (followed across kills and redeploys) and the machine's
busy cores, and over the run the fake's status webhooks (attempts against
deliveries: more attempts means the web answered some too late). A fault
ends when its action is undone (the worker respawned, the broker started);
the processes coming back is recovery, and every queue must have its
consumer again before the next slot.

CHAOS_FAULTS picks a subset (e.g. `CHAOS_FAULTS=rabbitmq_restart`).

This machine's PostgreSQL runs with autovacuum off (a CI setting); the run
does what autovacuum would, a `VACUUM (ANALYZE)` every 15 s at autovacuum's
pace (its cost delay and limit; `stack.Autovacuum`). Without it the
planner keeps planning for the empty tables it started with, and dead rows
(every message is rewritten five times) pile up: in a first run, 43,000 dead
message rows after five minutes slowed every greeting step until a backlog
never drained.

Writes bench/results/chaos.json (CHAOS_OUT). Only loopback is targeted; the
load is bounded in count and time like every bench loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import crm  # noqa: E402
from first_touch import accepted_per_recipient, fake, summarize, unsettled  # noqa: E402
from loadgen import phone_for  # noqa: E402
from stack import PORT, PY, ROOT, Autovacuum, Stack, _process_tree, configure_fake, db_query, prepare, queue_depths, stack_env  # noqa: E402

RATE = float(os.environ.get("CHAOS_RATE", "5000"))
FAULTS = os.environ.get("CHAOS_FAULTS", "")  # comma-separated subset of the slots below; default all
WARMUP = float(os.environ.get("CHAOS_WARMUP_SECONDS", "20"))
SLOT = float(os.environ.get("CHAOS_SLOT_SECONDS", "90"))
SETTLE_TIMEOUT = float(os.environ.get("CHAOS_SETTLE_SECONDS", "240"))
REDIS_PORT = int(os.environ.get("CHAOS_REDIS_PORT", "6391"))
OUT = Path(os.environ.get("CHAOS_OUT", ROOT / "bench" / "results" / "chaos.json"))
CALM = 10.0  # seconds at the start of each slot before its fault
IN_FLIGHT = 2.0  # leads sent this long before a fault are still being greeted when it hits: "during" includes them
AUTOVACUUM_EVERY = 15.0
TARGET_MS = 2000.0
RUN_ID = 71
LANES = ("first_touch", "conversations", "followups", "bulk")
CONSUMED = (*LANES, "conversations.events", "replies.events", "followups.events", "analytics.events", "crmsync.events")


@dataclass
class Slot:
    name: str
    what: str
    inject: Callable[[Stack], None]
    started: float = 0.0  # slot start, epoch seconds
    usage: dict = field(default_factory=dict)  # CPU share per process type over the slot, machine busy cores
    fault_from: float = 0.0
    fault_to: float = 0.0


# --- Faults -----------------------------------------------------------------------------


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"chaos: timed out waiting for {what}")
        time.sleep(0.2)


def _terminate(popen: subprocess.Popen, timeout: float = 40) -> None:
    os.killpg(popen.pid, signal.SIGTERM)
    try:
        popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()


def kill_first_touch(stack: Stack) -> None:
    stack.kill("first_touch")
    time.sleep(2.0)
    stack.respawn("first_touch")  # the fault ends here; the lane starting up is part of recovery


def deploy(stack: Stack) -> None:
    master = stack.popens["web"].pid
    workers = _process_tree(master)[1:]
    for worker in workers:
        os.kill(worker, signal.SIGTERM)  # graceful: in-flight requests finish; the master boots a replacement

        def replaced(worker=worker) -> bool:
            now = _process_tree(master)[1:]
            return worker not in now and len(now) == len(workers)

        _wait(replaced, 60, f"gunicorn to replace worker {worker}")
        time.sleep(3.0)  # the new worker imports Django before it accepts
    for lane in LANES:
        serving = stack.lane_consumers(lane)
        old = stack.respawn(lane)
        _wait(lambda lane=lane: stack.lane_consumers(lane) > serving, 60, f"the new {lane} lane")
        _terminate(old)
    for name in ("relay", "scheduler"):
        old = stack.popens[name]
        if name == "scheduler":  # one beat at a time: stop, then start
            _terminate(old)
            stack.respawn(name)
        else:  # two relays may overlap: they claim rows with SKIP LOCKED
            stack.respawn(name)
            time.sleep(3.0)
            _terminate(old)


def rabbitmq_restart(stack: Stack) -> None:
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, capture_output=True, timeout=120)
    time.sleep(10.0)
    subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, capture_output=True, timeout=120)


def redis_restart(stack: Stack) -> None:
    subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"], capture_output=True, timeout=30)
    time.sleep(10.0)
    start_redis()


def whatsapp_500(stack: Stack) -> None:
    configure_fake({"whatsapp_error_rate": 0.1})
    time.sleep(30.0)
    configure_fake({"whatsapp_error_rate": 0.0})


def hubspot_429(stack: Stack) -> None:
    configure_fake({"hubspot_always_429": True})
    time.sleep(60.0)
    configure_fake({"hubspot_always_429": False})


SLOTS = [
    Slot("kill_first_touch", "SIGKILL the first-touch worker; restarted 2 s later", kill_first_touch),
    Slot("deploy", "rolling SIGTERM restart of both web workers, every lane, the relay and the scheduler", deploy),
    Slot("rabbitmq_restart", "RabbitMQ stopped for 10 s, then started", rabbitmq_restart),
    Slot("redis_restart", "Redis stopped for 10 s, then started", redis_restart),
    Slot("whatsapp_500", "10% of WhatsApp calls answer 500 for 30 s", whatsapp_500),
    Slot("hubspot_429", "HubSpot answers every request 429 for 60 s", hubspot_429),
]


def chosen_slots() -> list[Slot]:
    if not FAULTS:
        return SLOTS
    names = [name.strip() for name in FAULTS.split(",") if name.strip()]
    unknown = sorted(set(names) - {slot.name for slot in SLOTS})
    if unknown:
        raise SystemExit(f"chaos: unknown fault {', '.join(unknown)}; known: {', '.join(slot.name for slot in SLOTS)}")
    return [slot for slot in SLOTS if slot.name in names]


def start_redis() -> None:
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(REDIS_PORT), "--save", "",
         "--appendonly", "no", "--dir", tempfile.gettempdir(), "--logfile", ""],
        check=True, capture_output=True, timeout=30,
    )
    _wait(lambda: subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True, text=True).stdout.strip() == "PONG",
          30, "the chaos Redis")


# --- Measuring ------------------------------------------------------------------------------


def wait_settled(since: datetime) -> dict:
    started = time.monotonic()
    left = unsettled(since)
    while left and time.monotonic() - started < SETTLE_TIMEOUT:
        time.sleep(2.0)
        left = unsettled(since)
    return {"waited_s": round(time.monotonic() - started, 1), "unsettled_leads": left}


def measure(load: dict, slots: list[Slot]) -> dict:
    start, interval = load["scheduled_start_epoch"], load["interval_s"]
    outcome = dict((i, status) for i, status in load["outcomes"])
    stored = {phone: (captured, responded) for phone, captured, responded in db_query(
        "SELECT c.phone, EXTRACT(EPOCH FROM l.captured_at)::float8, EXTRACT(EPOCH FROM l.first_response_at)::float8 "
        "FROM leads_lead l JOIN leads_contact c ON c.id = l.contact_id")}
    states = dict(db_query(
        "SELECT c.phone, coalesce(g.state, 'none') FROM leads_lead l JOIN leads_contact c ON c.id = l.contact_id "
        "LEFT JOIN conversations_greeting g ON g.lead_id = l.id"))
    wa_accepted, sms_accepted = accepted_per_recipient()
    accepted = wa_accepted + sms_accepted

    windows = [("warmup", start, slots[0].started, None, None)] + [
        (slot.name, slot.started, slots[i + 1].started if i + 1 < len(slots) else float("inf"), slot.fault_from, slot.fault_to)
        for i, slot in enumerate(slots)
    ]
    report = {}
    for name, begin, end, fault_from, fault_to in windows:
        counts = Counter()
        lost_states = Counter()
        during, after, per_second = [], [], defaultdict(list)
        for i in range(load["requests"]):
            scheduled = start + i * interval
            if not begin <= scheduled < end:
                continue
            status = outcome.get(i, "no answer")
            phone = phone_for(i, RUN_ID)
            ok = status.isdigit() and 200 <= int(status) < 300
            counts["submitted"] += 1
            counts["answered_2xx" if ok else "not_2xx"] += 1
            times = accepted[phone]
            if ok and phone not in stored:
                counts["lost"] += 1
                lost_states["answered 2xx, not stored"] += 1
            elif phone in stored and times == 0:  # stored is a promise, whatever the client heard
                counts["lost"] += 1
                lost_states[states.get(phone, "none")] += 1
            elif times == 1:
                counts["greeted_exactly_once"] += 1
            if times > 1:
                counts["duplicated"] += 1
            if not ok and phone in stored:
                counts["not_2xx_but_stored"] += 1  # e.g. answered after the client gave up; greeted like any lead
            responded = stored.get(phone, (None, None))[1]
            if responded is None:
                continue
            ms = (responded - scheduled) * 1000
            if not fault_from or fault_from - IN_FLIGHT <= scheduled <= fault_to:
                during.append(ms)  # the warm-up has no fault: its figures are the baseline
            elif fault_to and scheduled > fault_to:
                after.append(ms)
                per_second[int(scheduled - fault_to)].append(ms)
        entry = {
            "submitted": counts["submitted"], "answered_2xx": counts["answered_2xx"], "not_2xx": counts["not_2xx"],
            "not_2xx_but_stored": counts["not_2xx_but_stored"], "greeted_exactly_once": counts["greeted_exactly_once"],
            "lost": counts["lost"], "duplicated": counts["duplicated"],
        }
        if lost_states:
            entry["lost_by_greeting_state"] = dict(lost_states)
        if not fault_from:
            entry["first_message_ms"] = summarize(during)
        else:
            entry["fault_seconds"] = round(fault_to - fault_from, 1)
            entry["first_message_ms_during"] = summarize(during)
            entry["first_message_ms_after"] = summarize(after)
            entry["recovered_after_s"] = _recovery(per_second)
        report[name] = entry
    return report


def _recovery(per_second: dict[int, list[float]], window: int = 5) -> int | None:
    """Seconds after the fault ended from which the first-message p99 stays under the target,
    judged over consecutive `window`-second spans (a second holds ~83 leads: its p99 is one lead);
    None: not within the slot. Lost leads are counted apart, not here."""
    spans: dict[int, list[float]] = defaultdict(list)
    for second, values in per_second.items():
        spans[second // window * window].extend(values)
    recovered = None
    for start in sorted(spans):
        if summarize(spans[start])["p99"] < TARGET_MS:
            recovered = start if recovered is None else recovered
        else:
            recovered = None
    return recovered


# --- Run -------------------------------------------------------------------------------------


def main() -> None:
    slots = chosen_slots()
    total = WARMUP + SLOT * len(slots) + 5
    if total > 600:
        raise SystemExit(f"chaos: {total:.0f}s of load is over the load generator's 600 s bound; shorten CHAOS_SLOT_SECONDS")
    env = stack_env() | {"HUBSPOT_ACCESS_TOKEN": "chaos-hubspot-token"}  # the bench organization syncs to the fake CRM
    env["REDIS_URL"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
    print(f"chaos: {RATE:.0f} leads/min for {total:.0f}s: warm-up {WARMUP:.0f}s, then {len(slots)} faults, {SLOT:.0f}s each")
    start_redis()
    key = prepare(env)
    stack = Stack(env, ROOT / "var" / "chaos-logs")
    out_file = Path(tempfile.mkstemp(suffix=".json")[1])
    since = datetime.now(timezone.utc)
    try:
        stack.start()
        print("chaos: stack ready")
        loadgen = subprocess.Popen(
            [PY, str(ROOT / "bench" / "loadgen.py"), "--url", f"http://127.0.0.1:{PORT}", "--key", key, "--rate", str(RATE),
             "--seconds", str(total), "--run-id", str(RUN_ID), "--out", str(out_file), "--progress"],
        )
        vacuum = Autovacuum(AUTOVACUUM_EVERY, first=AUTOVACUUM_EVERY).start()
        time.sleep(WARMUP)
        for slot in slots:
            slot.started = time.time()
            stack.begin_sampling({"loadgen": lambda: [loadgen.pid]})
            time.sleep(CALM)
            print(f"\nchaos: {slot.name}: {slot.what}", flush=True)
            slot.fault_from = time.time()
            slot.inject(stack)
            slot.fault_to = time.time()
            print(f"chaos: {slot.name} cleared after {slot.fault_to - slot.fault_from:.1f}s", flush=True)
            # Before the next slot every consumer must be back (a lane that never reconnects is a
            # finding, not a slow recovery): the event queues and the lanes' task queues.
            _wait(lambda: all(stack.lane_consumers(queue) >= 1 for queue in CONSUMED), SLOT, "every queue to have its consumer again")
            while time.time() < slot.started + SLOT:
                time.sleep(min(1.0, slot.started + SLOT - time.time()))
                stack.sample()
            slot.usage = stack.usage(time.time() - slot.started)
        loadgen.wait(timeout=total + 120)
        print("\nchaos: load done; waiting for every greeting to settle ...", flush=True)
        settle = wait_settled(since)
        vacuum.stop()
        settle["outbox_backlog"] = db_query("SELECT count(*) FROM swiftex_outboxevent WHERE published_at IS NULL")[0][0]
        settle["queues_ready_and_consumers"] = queue_depths(env, ["conversations.events", "analytics.events", "crmsync.events", *LANES])
        print("chaos: waiting for the CRM sync to drain ...", flush=True)
        crm_drained = crm.wait_for_sync(time.monotonic(), timeout=SETTLE_TIMEOUT)
        crm_result = crm.check(crm.fake_crm(), since)
        load = json.loads(out_file.read_text())
        results = measure(load, slots)
        webhooks = fake("/_fake/webhooks?provider=openai")["stats"]
    finally:
        stack.stop()
        subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"], capture_output=True, timeout=30)
        out_file.unlink(missing_ok=True)
    report = {
        "benchmark": "chaos",
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {"rate_per_min": RATE, "warmup_s": WARMUP, "slot_s": SLOT, "target_first_message_ms": TARGET_MS},
        "faults": {slot.name: slot.what for slot in slots},
        "settle": settle,
        "client": {"requests": load["requests"], "statuses": load["statuses"], "errors": load["errors"]},
        "status_webhooks": webhooks,
        "crm": crm_result | {"seconds_to_drain_after_the_greetings_settled": crm_drained},
        "verdict": {
            "lost": sum(r["lost"] for r in results.values()),
            "duplicated": sum(r["duplicated"] for r in results.values()),
            "zero_lost_zero_duplicated": all(r["lost"] == 0 and r["duplicated"] == 0 for r in results.values()),
            "crm_lost": crm_result["lost"], "crm_duplicated": crm_result["duplicated"],
            "crm_stale_status": crm_result["with_stale_status"],
        },
        "slots": results,
        "cpu_share_of_one_core": {slot.name: {name: u.get("cpu_share_of_one_core", u.get("busy_cores")) for name, u in slot.usage.items()}
                                  for slot in slots},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"chaos: written to {OUT}")


def print_table(report: dict) -> None:
    print(f"\n{'slot':<18}{'2xx':>7}{'not 2xx':>9}{'once':>7}{'lost':>6}{'dup':>5}{'fault s':>9}{'p99 during':>12}{'p99 after':>11}{'recover s':>11}")
    for name, r in report["slots"].items():
        during = (r.get("first_message_ms_during") or r.get("first_message_ms") or {}).get("p99")
        after = (r.get("first_message_ms_after") or {}).get("p99")
        print(f"{name:<18}{r['answered_2xx']:>7}{r['not_2xx']:>9}{r['greeted_exactly_once']:>7}{r['lost']:>6}{r['duplicated']:>5}"
              f"{r.get('fault_seconds', ''):>9}{during if during is not None else '':>12}{after if after is not None else '':>11}"
              f"{r.get('recovered_after_s') if r.get('recovered_after_s') is not None else '':>11}")
    print(f"status webhooks: {json.dumps(report['status_webhooks'])}")
    print(f"crm: {json.dumps(report['crm'])}")
    print("machine busy (of 2 cores): " + ", ".join(f"{name} {cpu['machine']}" for name, cpu in report["cpu_share_of_one_core"].items()))
    print(f"verdict: {json.dumps(report['verdict'])}")


if __name__ == "__main__":
    main()
