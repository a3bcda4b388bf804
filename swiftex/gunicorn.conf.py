"""gunicorn settings for the web process (`make up`, benchmarks)."""

import os
import sys
from pathlib import Path

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "4"))
# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms).
# A request that wakes from PostgreSQL or Redis waits for the GIL each time; at 5,000
# leads/min four A/B runs gave ingest p99 203-435 ms at 1 ms against 564-3,926 ms at 5 ms,
# for the same web CPU (bench/README.md).
try:
    switch_interval_ms = float(os.environ.get("WEB_SWITCH_INTERVAL_MS", "1"))
except ValueError:
    switch_interval_ms = 0.0
if not 0 < switch_interval_ms <= 100:
    raise SystemExit(f"WEB_SWITCH_INTERVAL_MS={os.environ['WEB_SWITCH_INTERVAL_MS']!r}: use milliseconds, more than 0 and at most 100.")
timeout = 30
graceful_timeout = 20  # a deploy's SIGTERM lets in-flight requests finish
keepalive = 5
accesslog = os.environ.get("WEB_ACCESS_LOG") or None
errorlog = "-"

# Several processes: Prometheus counters are merged from files at scrape. The lanes,
# relay and scheduler of the host write to the same directory, so it is wiped by
# whoever starts them all (`make up`, bench/stack.py, tests/support.py), never here:
# a web restarting alone must not erase the workers' counters.
_metrics_dir = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(Path(__file__).resolve().parent.parent / "var" / "prometheus")))


def post_fork(server, worker):
    sys.setswitchinterval(switch_interval_ms / 1000)


def post_worker_init(worker):
    # The app is loaded: import the views too, then exempt all of it from the garbage
    # collector's full passes, which otherwise stop every request thread (swiftex/heap.py).
    from swiftex.heap import freeze_startup_objects, load_url_patterns

    load_url_patterns()
    freeze_startup_objects("web worker")


def on_starting(server):
    _metrics_dir.mkdir(parents=True, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
