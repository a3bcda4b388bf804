"""Helpers for tests that drive real processes and services."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from django.conf import settings
from django.db import connection
from django.test import Client
import requests
from kombu import Connection

from tests.factories import PROVIDER_CREDENTIALS

ROOT = Path(__file__).resolve().parent.parent


def api_client(key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def race(n: int, make_request):
    """Run `make_request(i)` in n threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def one(i):
        try:
            barrier.wait(timeout=30)
            return make_request(i)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def post_json(client: Client, path: str, body, **headers):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", **headers)


def wait_until(condition: Callable[[], object], *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll until `condition()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def queue_depth(name: str) -> tuple[int, int]:
    """(messages ready, consumers) for a queue, read from RabbitMQ."""
    with Connection(settings.CELERY_BROKER_URL) as conn:
        _, messages, consumers = conn.default_channel.queue_declare(name, passive=True)
        return messages, consumers


def unacked(name: str) -> int:
    """Messages of a queue delivered to a consumer and not yet acked (rabbitmqctl: AMQP cannot tell)."""
    from urllib.parse import unquote, urlsplit

    vhost = unquote(urlsplit(settings.CELERY_BROKER_URL).path[1:]) or "/"
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages_unacknowledged", "--no-table-headers"],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return next((int(count) for queue, count in (line.split() for line in out.splitlines() if line.strip()) if queue == name), 0)


def child_env() -> dict:
    """Environment for a child process that must use the test database."""
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        PYTHONUNBUFFERED="1",
    )
    return env


class ManagedProcess:
    """A real Swiftex process (lane worker, relay) against the test database and vhost."""

    def __init__(self, name: str, argv: list[str], ready_marker: bytes, log_path: Path, env: dict | None = None) -> None:
        self.name = name
        self.argv = argv
        self.ready_marker = ready_marker
        self.log_path = log_path
        self.env = env or {}
        self.process: subprocess.Popen | None = None

    @classmethod
    def lane(cls, lane: str, log_dir: Path, env: dict | None = None) -> ManagedProcess:
        argv = ["manage.py", "run_lane", lane, "--loglevel", "INFO"]
        return cls(lane, argv, b" ready.", log_dir / f"{lane}-{time.monotonic_ns()}.log", env)

    @classmethod
    def relay(cls, log_dir: Path, env: dict | None = None) -> ManagedProcess:
        return cls("relay", ["manage.py", "outbox_relay"], b"outbox relay started", log_dir / f"relay-{time.monotonic_ns()}.log", env)

    @classmethod
    def scheduler(cls, log_dir: Path, env: dict | None = None) -> ManagedProcess:
        schedule = log_dir / f"beat-{time.monotonic_ns()}"
        argv = ["-m", "celery", "-A", "swiftex", "beat", "--loglevel", "INFO", "--schedule", str(schedule)]
        return cls("scheduler", argv, b"beat: Starting", log_dir / f"scheduler-{time.monotonic_ns()}.log", env)

    @classmethod
    def web(cls, port: int, log_dir: Path, env: dict | None = None) -> ManagedProcess:
        argv = ["-m", "gunicorn", "swiftex.wsgi", "-c", "swiftex/gunicorn.conf.py"]
        env = {"PORT": str(port), "WEB_WORKERS": "1", **(env or {})}
        return cls("web", argv, b"Booting worker", log_dir / f"web-{time.monotonic_ns()}.log", env)

    def start(self) -> ManagedProcess:
        log = self.log_path.open("ab")
        env = {**child_env(), "LOG_LEVEL": "INFO", **self.env}
        self.process = subprocess.Popen([sys.executable, *self.argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(
            lambda: self.ready_marker in self.log_path.read_bytes() or self.process.poll() is not None,
            timeout=60, what=f"{self.name} to start",
        )
        assert self.process.poll() is None, f"{self.name} exited:\n{self.log()}"
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Stack:
    """Web, relay, the first-touch, conversations and follow-up lanes and (unless
    `scheduler=False`) the scheduler, sharing one environment pointed at the fakes
    and one Prometheus directory, empty at start (the web's /metrics merges every
    process's samples): one deployment, one host."""

    def __init__(self, fakes, log_dir, *, scheduler: bool = True, lanes: tuple[str, ...] = ("conversations", "followups"),
                 env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.fakes = fakes
        self.log_dir = log_dir
        # Every test's organization has the same WhatsApp number: no cache may carry
        # the previous test's tenant into the next one.
        metrics_dir = log_dir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        self.env = {**fakes.env(), "PUBLIC_BASE_URL": self.url, "ORGANIZATION_CACHE_SECONDS": "0",
                    "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **(env or {})}
        self.web = ManagedProcess.web(self.port, log_dir, self.env).start()
        self.relay = ManagedProcess.relay(log_dir, self.env).start()
        self.lane = ManagedProcess.lane("first_touch", log_dir, self.env).start()
        self.others = [ManagedProcess.lane(lane, log_dir, self.env).start() for lane in lanes]
        if scheduler:  # delivery statuses are applied by the conversations lane, on the scheduler's beat
            self.others.append(ManagedProcess.scheduler(log_dir, self.env).start())
        self.extra_webs: list[ManagedProcess] = []

    def add_web(self) -> str:
        """Another web process (its own port) of this deployment; returns its URL."""
        port = free_port()
        self.extra_webs.append(ManagedProcess.web(port, self.log_dir, {**self.env, "PORT": str(port)}).start())
        return f"http://127.0.0.1:{port}"

    def stop_workers(self) -> None:
        """Every lane and the scheduler (web and relay stay up)."""
        for process in (self.lane, *self.others):
            process.stop()

    def start_workers(self) -> None:
        """Start what `stop_workers` stopped, as new processes with their own logs."""
        self.lane = ManagedProcess.lane("first_touch", self.log_dir, self.env).start()
        self.others = [
            ManagedProcess.scheduler(self.log_dir, self.env).start() if p.name == "scheduler"
            else ManagedProcess.lane(p.name, self.log_dir, self.env).start()
            for p in self.others
        ]

    def other(self, name: str) -> ManagedProcess:
        return next(p for p in self.others if p.name == name)

    def replace_other(self, name: str) -> None:
        """Start a new process for the lane (or scheduler) `name`, which was stopped or killed."""
        index = next(i for i, p in enumerate(self.others) if p.name == name)
        self.others[index] = ManagedProcess.lane(name, self.log_dir, self.env).start()

    def restart_lane(self, *, kill: bool) -> None:
        self.lane.kill() if kill else self.lane.stop()
        self.lane = ManagedProcess.lane("first_touch", self.log_dir, self.env).start()

    def stop(self) -> None:
        for process in (self.lane, *self.others, self.relay, *self.extra_webs, self.web):
            process.stop()


def contact_writes(web_url: str, phone: str, text: str) -> None:
    """A contact's text message, as Meta posts it: a signed webhook to `web_url`."""
    metadata = {"display_phone_number": "15550001111", "phone_number_id": PROVIDER_CREDENTIALS["whatsapp_phone_number_id"]}
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": metadata,
        "contacts": [{"wa_id": phone.lstrip("+"), "profile": {"name": "Ana"}}],
        "messages": [{"from": phone.lstrip("+"), "id": f"wamid.in.{uuid.uuid4().hex}", "timestamp": str(int(time.time())),
                      "type": "text", "text": {"body": text}}],
    }}]}]}
    raw = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(FakeProviders.APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    response = requests.post(f"{web_url}/webhooks/whatsapp", data=raw, timeout=10,
                             headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature})
    assert response.status_code == 200, response.text


def rabbitmq(command: str) -> None:
    """`rabbitmqctl stop_app` / `start_app`: stop and start the real broker."""
    subprocess.run(["rabbitmqctl", "-q", command], check=True, capture_output=True, timeout=120)
    if command == "start_app":
        subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=True, capture_output=True, timeout=120)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeProviders:
    """The project's fake provider server (`python -m fakes`) as a real process."""

    APP_SECRET = "test-whatsapp-app-secret"
    AUTH_TOKEN = "test-twilio-auth-token"

    def __init__(self, webhook_url: str, log_dir: Path) -> None:
        self.webhook_url = webhook_url
        self.log_path = log_dir / f"fakes-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> FakeProviders:
        argv = [sys.executable, "-m", "fakes", "--port", "0", "--webhook-url", self.webhook_url,
                "--whatsapp-app-secret", self.APP_SECRET, "--twilio-auth-token", self.AUTH_TOKEN,
                "--status-delay-ms", "20", "--model-latency-ms", "0", "--whatsapp-latency-ms", "0", "--sms-latency-ms", "0"]
        self.process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log_path.open("ab"), text=True)
        line = self.process.stdout.readline()
        assert "listening on" in line, f"fake providers did not start: {line!r}"
        self.url = line.strip().rsplit(" ", 1)[-1]
        return self

    def env(self) -> dict:
        """Settings that point Swiftex at this server."""
        return {
            "OPENAI_BASE_URL": f"{self.url}/openai/v1",
            "OPENAI_API_KEY": "test-openai-key",
            "WHATSAPP_API_URL": f"{self.url}/whatsapp/v23.0",
            "TWILIO_API_URL": f"{self.url}/twilio",
            "HUBSPOT_API_URL": f"{self.url}/hubspot",
            "GRAPH_API_URL": f"{self.url}/graph/v23.0",
            "META_APP_SECRET": self.APP_SECRET,  # the fake signs leadgen webhooks with its one Meta app secret
        }

    def configure(self, **config) -> dict:
        return self._call("POST", "/_fake/config", config)

    def reset(self) -> None:
        self._call("POST", "/_fake/reset", {})

    def requests(self, provider: str) -> list[dict]:
        return self._call("GET", f"/_fake/requests?provider={provider}")["requests"]

    def hubspot(self) -> dict:
        """The fake CRM: {"contacts": [...], "stats": {...}}."""
        return self._call("GET", "/_fake/hubspot/contacts")

    def crm_webhook_deliveries(self) -> list[dict]:
        return self._call("GET", "/_fake/crm-webhook")["deliveries"]

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        # urllib, not requests: tests mock `requests` with `responses`.
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"{}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
