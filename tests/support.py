"""Helpers for tests that drive real processes and services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from django.conf import settings
from django.db import connection
from django.test import Client
from kombu import Connection

ROOT = Path(__file__).resolve().parent.parent


def api_client(key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


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

    def __init__(self, name: str, argv: list[str], ready_marker: bytes, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.ready_marker = ready_marker
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @classmethod
    def lane(cls, lane: str, log_dir: Path) -> ManagedProcess:
        argv = ["manage.py", "run_lane", lane, "--loglevel", "INFO"]
        return cls(lane, argv, b" ready.", log_dir / f"{lane}-{time.monotonic_ns()}.log")

    @classmethod
    def relay(cls, log_dir: Path) -> ManagedProcess:
        return cls("relay", ["manage.py", "outbox_relay"], b"outbox relay started", log_dir / f"relay-{time.monotonic_ns()}.log")

    def start(self) -> ManagedProcess:
        log = self.log_path.open("ab")
        env = {**child_env(), "LOG_LEVEL": "INFO"}
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


def rabbitmq(command: str) -> None:
    """`rabbitmqctl stop_app` / `start_app`: stop and start the real broker."""
    subprocess.run(["rabbitmqctl", "-q", command], check=True, capture_output=True, timeout=120)
    if command == "start_app":
        subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=True, capture_output=True, timeout=120)
