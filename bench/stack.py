"""Run the Swiftex stack for a benchmark, isolated from a development stack.

A fresh database (`swiftex_bench`), RabbitMQ vhost (`swiftex_bench`) and Redis
database (14) per run; the same process types as `make up` (Procfile), with
their RSS and CPU sampled from /proc. Providers are the fake server
(`python -m fakes`) on loopback, with the model and WhatsApp latencies set by
BENCH_MODEL_MS / BENCH_WHATSAPP_MS / BENCH_SMS_MS (400 / 150 / 150 ms). It is
sampled too, but it is load-generator-side cost, not Swiftex's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from kombu import Connection

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BENCH_DB = "swiftex_bench"
BENCH_VHOST = "swiftex_bench"
PORT = int(os.environ.get("BENCH_PORT", "8100"))
FAKE_PORT = int(os.environ.get("BENCH_FAKE_PORT", "8901"))
FAKE_URL = f"http://127.0.0.1:{FAKE_PORT}"
# The fakes' own delay per call: what a greeting cannot go faster than.
MODEL_MS = float(os.environ.get("BENCH_MODEL_MS", "400"))
WHATSAPP_MS = float(os.environ.get("BENCH_WHATSAPP_MS", "150"))
SMS_MS = float(os.environ.get("BENCH_SMS_MS", "150"))
HUBSPOT_MS = float(os.environ.get("BENCH_HUBSPOT_MS", "150"))  # the fake HubSpot also allows 10 requests/s
# Shared by the fake (which signs webhooks / checks auth with them) and the bench organization.
WHATSAPP_APP_SECRET = "bench-whatsapp-app-secret"
TWILIO_AUTH_TOKEN = "bench-twilio-auth-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

PROCESSES = {
    "web": ["gunicorn", "swiftex.wsgi", "-c", "swiftex/gunicorn.conf.py"],
    "relay": [PY, "manage.py", "outbox_relay"],
    "first_touch": [PY, "manage.py", "run_lane", "first_touch", "--loglevel", "WARNING"],
    "conversations": [PY, "manage.py", "run_lane", "conversations", "--loglevel", "WARNING"],
    "followups": [PY, "manage.py", "run_lane", "followups", "--loglevel", "WARNING"],
    "bulk": [PY, "manage.py", "run_lane", "bulk", "--loglevel", "WARNING"],
    # Runs the greeting sweep (WhatsApp messages with no `sent` status fall back to SMS).
    "scheduler": ["celery", "-A", "swiftex", "beat", "--loglevel", "WARNING"],
}
# Started first, before anything that could call it; not part of Swiftex.
FAKES = [
    PY, "-m", "fakes", "--port", str(FAKE_PORT), "--webhook-url", f"http://127.0.0.1:{PORT}",
    "--whatsapp-app-secret", WHATSAPP_APP_SECRET, "--twilio-auth-token", TWILIO_AUTH_TOKEN,
    "--model-latency-ms", f"{MODEL_MS:g}", "--whatsapp-latency-ms", f"{WHATSAPP_MS:g}", "--sms-latency-ms", f"{SMS_MS:g}",
    "--hubspot-latency-ms", f"{HUBSPOT_MS:g}", "--hubspot-rate-limit", "10",
    # A provider spaces out its retries of a webhook the receiver did not answer in time; the
    # fake's short default schedule (for tests) would hit a busy web with a retry storm.
    "--webhook-retry-delays-ms", "2000,10000,30000,60000",
]


def configure_fake(update: dict) -> None:
    request = urllib.request.Request(f"{FAKE_URL}/_fake/config", data=json.dumps(update).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()


def stack_env() -> dict:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}",
        REDIS_URL="redis://127.0.0.1:6379/14",
        CELERY_BROKER_URL=f"amqp://guest:guest@127.0.0.1:5672/{BENCH_VHOST}",
        PORT=str(PORT),
        LOG_LEVEL="WARNING",
        PROMETHEUS_MULTIPROC_DIR=str(ROOT / "var" / "bench-prometheus"),
        PATH=f"{Path(PY).parent}:{env.get('PATH', '')}",
        DJANGO_SETTINGS_MODULE="swiftex.settings",
        CELERY_BEAT_SCHEDULE_FILENAME=str(ROOT / "var" / "bench-celerybeat-schedule"),
        # Providers: the fake server. A new organization copies the credentials below.
        OPENAI_BASE_URL=f"{FAKE_URL}/openai/v1",
        OPENAI_API_KEY="bench-key",
        WHATSAPP_API_URL=f"{FAKE_URL}/whatsapp/v23.0",
        TWILIO_API_URL=f"{FAKE_URL}/twilio",
        HUBSPOT_API_URL=f"{FAKE_URL}/hubspot",  # CRM sync is on only where a bench sets HUBSPOT_ACCESS_TOKEN
        PUBLIC_BASE_URL=f"http://127.0.0.1:{PORT}",
        WHATSAPP_PHONE_NUMBER_ID="100000000000042",
        WHATSAPP_ACCESS_TOKEN="bench-token",
        WHATSAPP_APP_SECRET=WHATSAPP_APP_SECRET,
        WHATSAPP_VERIFY_TOKEN="bench-verify",
        TWILIO_ACCOUNT_SID="AC" + "b" * 32,
        TWILIO_AUTH_TOKEN=TWILIO_AUTH_TOKEN,
        TWILIO_FROM_NUMBER="+15550002222",
    )
    return env


def prepare(env: dict) -> str:
    """Fresh database, vhost and Redis db; returns an API key for a bench organization."""
    with psycopg.connect(dbname="postgres", host="127.0.0.1", user="postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", BENCH_VHOST], capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", BENCH_VHOST], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", BENCH_VHOST, "guest", ".*", ".*", ".*"], check=True, capture_output=True)
    subprocess.run(["redis-cli", "-n", "14", "flushdb"], check=True, capture_output=True)
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    out = subprocess.run(
        [PY, "manage.py", "create_organization", "Bench", "--rate-per-minute", "1000000"],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    ).stdout
    return out.strip().splitlines()[-1]


# Services and the load generator share the same two cores; their CPU is part
# of the cost of a lead, so it is measured too (by process name).
SERVICE_COMMS = {"postgres": "postgres", "beam.smp": "rabbitmq", "redis-server": "redis"}


def _service_pids() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm in SERVICE_COMMS:
                found.setdefault(SERVICE_COMMS[comm], []).append(int(entry.name))
    return found


def _usage(pids: list[int]) -> tuple[int, int]:
    rss = ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            statm = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        ticks += int(stat[11]) + int(stat[12])  # utime + stime
        rss += int(statm[1]) * PAGE
    return rss, ticks


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def machine_speed_ms() -> float:
    """CPU milliseconds this process needs for a fixed piece of pure Python (best of three).

    This machine is a share of a larger host, and the same code at the same load has run
    2-3x apart in latency within a day. Taken with the stack idle before each step, this
    tells whether a slow run had slower cores. On 2026-11-25 it read 150-177 ms before every
    step, in runs at 1.83 and at 1.98 busy alike: that day's slow phase was not the cores."""

    def once() -> float:
        started, total = time.process_time(), 0
        for i in range(3_000_000):
            total += i * i % 7
        return time.process_time() - started

    return round(min(once() for _ in range(3)) * 1000, 1)


@dataclass
class Group:
    """A set of processes measured together: a process type, a service, the load generator."""

    name: str
    find_pids: object  # () -> list[int]
    peak_rss: int = 0
    cpu_ticks_start: int = 0
    cpu_ticks_last: int = 0
    # CPU ticks of every process seen in the group, kept after it exits (a PostgreSQL backend
    # that closed, a worker killed or replaced), so its work still counts.
    seen: dict[int, int] = field(default_factory=dict)

    def rss_and_ticks(self) -> tuple[int, int]:
        rss = 0
        for pid in self.find_pids():
            pid_rss, ticks = _usage([pid])
            rss += pid_rss
            self.seen[pid] = max(self.seen.get(pid, 0), ticks)
        return rss, sum(self.seen.values())


def _process_tree(pid: int) -> list[int]:
    """A process and its children (gunicorn workers, Celery pool)."""
    try:
        return [pid, *(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    except OSError:
        return [pid]


class Stack:
    def __init__(self, env: dict, log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.popens: dict[str, subprocess.Popen] = {}
        self.groups: dict[str, Group] = {}

    def start(self) -> None:
        if port_in_use(PORT):
            raise SystemExit(f"port {PORT} is already in use (a leftover stack?); stop it or set BENCH_PORT")
        if port_in_use(FAKE_PORT):
            raise SystemExit(f"port {FAKE_PORT} is already in use (a leftover fake server?); stop it or set BENCH_FAKE_PORT")
        # A SIGTERM (CI timeout, `timeout`) must still stop the children, which
        # run in their own sessions: turn it into an exception `finally` sees.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Every process below writes its Prometheus samples here; the run's counters start at zero.
        shutil.rmtree(self.env["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
        os.makedirs(self.env["PROMETHEUS_MULTIPROC_DIR"])
        self._spawn("fakes", FAKES)
        self._wait_for_line("fakes", b"fake providers listening")
        for name, argv in PROCESSES.items():
            self._spawn(name, argv)
        self._wait_ready()

    def _spawn(self, name: str, argv: list[str], mode: str = "wb") -> None:
        log = (self.log_dir / f"{name}.log").open(mode)
        self.popens[name] = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self, name: str) -> None:
        """SIGKILL a process type (and its pool or workers), as a crash would."""
        popen = self.popens[name]
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=30)

    def respawn(self, name: str) -> subprocess.Popen:
        """Start another process of a type (a restart, or the new half of a deploy); returns the old one."""
        old = self.popens[name]
        self._spawn(name, PROCESSES[name], mode="ab")
        return old

    def lane_consumers(self, lane: str) -> int:
        return queue_depths(self.env, [lane]).get(lane, (0, 0))[1]

    def _wait_for_line(self, name: str, line: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while line not in (self.log_dir / f"{name}.log").read_bytes():
            if self.popens[name].poll() is not None:
                raise RuntimeError(f"{name} exited; see {self.log_dir / name}.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {self.log_dir / name}.log")
            time.sleep(0.1)

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readyz", timeout=2).status == 200:
                    lanes_ready = all(
                        b" ready." in (self.log_dir / f"{lane}.log").read_bytes() or self._lane_consuming(lane)
                        for lane in ("first_touch", "conversations", "followups", "bulk")
                    )
                    if lanes_ready:
                        return
            except OSError:
                pass
            for name, popen in self.popens.items():
                if popen.poll() is not None:
                    raise RuntimeError(f"{name} exited; see {self.log_dir / name}.log")
            time.sleep(0.5)
        raise RuntimeError("stack did not become ready")

    def _lane_consuming(self, lane: str) -> bool:
        return self.lane_consumers(lane) > 0

    def begin_sampling(self, extra: dict[str, object] | None = None) -> None:
        """Start measuring our processes, the services, and `extra` groups (name -> pid finder)."""
        # The process running now under each name: a killed or redeployed one is replaced in `popens`.
        self.groups = {name: Group(name, lambda name=name: _process_tree(self.popens[name].pid)) for name in self.popens}
        for name in SERVICE_COMMS.values():
            # Re-scanned at every sample: PostgreSQL backends come and go.
            self.groups[name] = Group(name, lambda name=name: _service_pids().get(name, []))
        for name, finder in (extra or {}).items():
            self.groups[name] = Group(name, finder)
        for group in self.groups.values():
            group.peak_rss, group.cpu_ticks_start = group.rss_and_ticks()
            group.cpu_ticks_last = group.cpu_ticks_start
        self.machine_start = _machine_ticks()

    def sample(self) -> None:
        # Keep the last reading: a process that exits (the load generator) takes its counters with it.
        for group in self.groups.values():
            rss, ticks = group.rss_and_ticks()
            group.peak_rss = max(group.peak_rss, rss)
            group.cpu_ticks_last = max(group.cpu_ticks_last, ticks)

    def usage(self, elapsed: float) -> dict:
        out = {}
        self.sample()
        for name, group in self.groups.items():
            out[name] = {
                "peak_rss_mb": round(group.peak_rss / 2**20, 1),
                "cpu_share_of_one_core": round((group.cpu_ticks_last - group.cpu_ticks_start) / CLK_TCK / elapsed, 3),
            }
        # Everything on the machine, measured or not: how close to the cores it ran.
        busy, total = (end - start for end, start in zip(_machine_ticks(), self.machine_start))
        out["machine"] = {"cores": os.cpu_count(), "busy_cores": round(busy / total * os.cpu_count(), 2) if total else None}
        return out

    def stop(self) -> None:
        for popen in self.popens.values():
            if popen.poll() is None:
                os.killpg(popen.pid, signal.SIGTERM)
        for popen in self.popens.values():
            try:
                popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def queue_depths(env: dict, names: list[str]) -> dict[str, tuple[int, int]]:
    depths = {}
    with Connection(env["CELERY_BROKER_URL"], connect_timeout=3) as conn:
        for name in names:
            try:
                _, messages, consumers = conn.channel().queue_declare(name, passive=True)
                depths[name] = (messages, consumers)
            except Exception:  # noqa: BLE001 - not declared yet
                depths[name] = (0, 0)
    return depths


def db_query(sql: str, params: list | None = None):
    with psycopg.connect(dbname=BENCH_DB, host="127.0.0.1", user="postgres", autocommit=True) as conn:
        return conn.execute(sql, params or []).fetchall()


def db_execute(sql: str, params: list | dict | None = None) -> int:
    """A statement with no result rows; returns the rows it touched."""
    with psycopg.connect(dbname=BENCH_DB, host="127.0.0.1", user="postgres", autocommit=True) as conn:
        return conn.execute(sql, params or []).rowcount


def autovacuum(*, throttled: bool = False) -> None:
    """What autovacuum does in production: `VACUUM (ANALYZE)`. This machine's PostgreSQL runs
    with autovacuum off (a CI setting), so without it every query plans against the empty tables
    of the fresh database, and the rows each lead rewrites (a message's five statuses, the status
    inbox, the outbox) leave dead tuples that every later scan steps over. `throttled`: at
    autovacuum's own pace (its default cost delay and limit), for a vacuum under load; a plain
    VACUUM runs flat out (1.3 s of a core in a 5,000/min step)."""
    with psycopg.connect(dbname=BENCH_DB, host="127.0.0.1", user="postgres", autocommit=True) as conn:
        if throttled:
            conn.execute("SET vacuum_cost_delay = '2ms'")
            conn.execute("SET vacuum_cost_limit = 200")
        conn.execute("VACUUM (ANALYZE)")


class Autovacuum:
    """`autovacuum()` in a background thread: `first` seconds after start, then every `every`
    seconds, until stopped. A bench database starts empty: without it, a statement prepared in
    the first seconds keeps the plan it got for tables of a few rows (the status update scanned
    every message of the organization, 230 buffers and 3.6-8.5 ms a call against 0.2 ms)."""

    def __init__(self, every: float = 15.0, first: float = 5.0) -> None:
        self.every, self.first = every, first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Autovacuum:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def __enter__(self) -> Autovacuum:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        wait = self.first
        while not self._stop.wait(wait):
            wait = self.every
            try:
                autovacuum(throttled=True)
            except Exception as exc:  # noqa: BLE001 - statistics only; the run goes on
                print(f"bench: VACUUM (ANALYZE) failed: {exc}", file=sys.stderr)
