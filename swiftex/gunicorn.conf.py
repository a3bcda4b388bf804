"""gunicorn settings for the web process (`make up`, benchmarks)."""

import os
from pathlib import Path

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "4"))
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


def on_starting(server):
    _metrics_dir.mkdir(parents=True, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
