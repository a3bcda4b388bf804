"""Fixtures that talk to the real PostgreSQL, Redis and RabbitMQ."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management.base import CommandError
from kombu import Connection

from leads import auth
from swiftex import redis as swx_redis
from swiftex import ttlcache
from swiftex.events.topology import DEAD_LETTER_QUEUE, declare_all, subscriber_queue
from tests.factories import org_with_key
from tests.support import api_client


def _ensure_test_vhost() -> None:
    """Create the test vhost on first use (a local RabbitMQ managed by rabbitmqctl)."""
    try:
        with Connection(settings.CELERY_BROKER_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
            return
    except Exception:  # noqa: BLE001 - most likely the vhost does not exist yet
        pass
    vhost = settings.CELERY_BROKER_URL.rsplit("/", 1)[-1]
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=False, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True, capture_output=True)


@pytest.fixture(scope="session", autouse=True)
def _flush_survives_a_deadlock():
    """The end-to-end tests keep real workers running while the database is flushed between
    tests. TRUNCATE locks table after table; a worker's transaction that holds one of them
    and wants another makes PostgreSQL pick a victim, sometimes the TRUNCATE. Retry it, as
    any client does with a deadlock victim."""
    from django.core.management.commands import flush

    original = flush.Command.handle

    def handle(self, **options):
        for attempt in range(5):
            try:
                return original(self, **options)
            except CommandError as exc:
                if "deadlock" not in str(exc.__cause__) or attempt == 4:
                    raise
                time.sleep(0.2)

    flush.Command.handle = handle
    yield
    flush.Command.handle = original


@pytest.fixture(scope="session", autouse=True)
def _broker_topology():
    _ensure_test_vhost()
    with Connection(settings.CELERY_BROKER_URL) as conn:
        declare_all(conn.default_channel)


@pytest.fixture(autouse=True)
def _clean_state():
    """Each test starts with empty queues, an empty Redis test db and fresh caches."""
    swx_redis.breaker.reset()
    auth.clear_cache()
    ttlcache.clear_all()
    try:
        swx_redis.client().flushdb()
    except Exception:  # noqa: BLE001 - tests that need Redis will say so
        pass
    purge_queues()
    yield
    swx_redis.breaker.reset()


def purge_queues() -> None:
    with Connection(settings.CELERY_BROKER_URL) as conn:
        channel = conn.default_channel
        for name in settings.SWIFTEX_SUBSCRIBERS:
            subscriber_queue(name)(channel).purge()
        DEAD_LETTER_QUEUE(channel).purge()
        for lane in settings.SWIFTEX_LANES.values():
            try:
                channel.queue_purge(lane["queue"])
            except Exception:  # noqa: BLE001 - not declared yet
                channel = conn.channel()


@pytest.fixture
def org_and_key(db):
    return org_with_key()


@pytest.fixture
def client_for(org_and_key):
    org, key = org_and_key
    return api_client(key)


@pytest.fixture(scope="session")
def fake_providers(tmp_path_factory):
    """The fake provider server, started once; each test gets it reset (see `fakes`)."""
    from tests.support import FakeProviders

    server = FakeProviders("http://127.0.0.1:9", tmp_path_factory.mktemp("fakes")).start()
    yield server
    server.stop()


@pytest.fixture
def fakes(fake_providers):
    fake_providers.reset()
    return fake_providers


# --- Browser tests (tests/test_browser.py, tests/test_webforms_browser.py) ----------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network: no background calls home that the sandbox would refuse.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is missing: `make browser` installs Debian's chromium package"
    # Playwright's sync API keeps an event loop in this thread; the ORM calls in these
    # tests are plain synchronous code that Django would otherwise refuse to run.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
