"""Settings, health, metrics, rate limits and management commands."""

import subprocess
import sys

import pytest
from celery.app.defaults import NAMESPACES, flatten
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from prometheus_client.parser import text_string_to_metric_families

from leads.models import Submission
from swiftex import env
from swiftex import redis as swx_redis
from tests.factories import org_with_key
from tests.support import ROOT, api_client, child_env, post_json

ANA = {"phone": "+14155550123", "source": "web"}


# --- settings -------------------------------------------------------------------


def test_every_celery_setting_is_a_real_celery_setting():
    known = {name for name, _ in flatten(NAMESPACES)}
    ours = {name.removeprefix("CELERY_").lower() for name in dir(settings) if name.startswith("CELERY_")}
    assert ours - known == set()


@pytest.mark.parametrize(
    ("reader", "value", "message"),
    [
        (lambda: env.env_int("X_NUM", 1), "ten", "X_NUM='ten' is not a whole number"),
        (lambda: env.env_int("X_NUM", 1, minimum=1), "0", "below the minimum"),
        (lambda: env.env_bool("X_NUM", True), "maybe", "is not a boolean"),
        (lambda: env.env_url("X_NUM", "redis://x", schemes=("redis",)), "http://x", "must be a URL starting with redis://"),
        (lambda: env.database_from_url("X_NUM", "postgres://h/db"), "postgres://127.0.0.1:5432/", "must name a database"),
        (lambda: env.env_url("X_NUM", "redis://x", schemes=("redis",)), "redis://host:port", "invalid port"),
        (lambda: env.env_choice("X_NUM", "a", ("a", "b")), "max_token", "X_NUM='max_token' is not one of a, b"),
        (lambda: env.env_optional_float("X_NUM", 0.7, maximum=2), "3", "above the maximum"),
    ],
)
def test_bad_environment_values_are_rejected_with_the_variable_named(monkeypatch, reader, value, message):
    monkeypatch.setenv("X_NUM", value)
    with pytest.raises(ImproperlyConfigured, match=message):
        reader()


def test_an_empty_optional_number_means_none_and_an_unset_one_its_default(monkeypatch):
    monkeypatch.setenv("X_NUM", "")
    assert env.env_optional_float("X_NUM", 0.7) is None
    monkeypatch.delenv("X_NUM")
    assert env.env_optional_float("X_NUM", 0.7) == 0.7


def test_secret_can_come_from_a_file(monkeypatch, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    monkeypatch.delenv("X_TOKEN", raising=False)
    monkeypatch.setenv("X_TOKEN_FILE", str(secret))
    assert env.env_str("X_TOKEN") == "s3cret"


def test_process_refuses_to_start_with_a_bad_database_url():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
        env={**child_env(), "DATABASE_URL": "mysql://127.0.0.1/swiftex"}, timeout=60,
    )
    assert result.returncode != 0
    assert "DATABASE_URL must be a URL starting with postgres://" in result.stderr


@pytest.mark.django_db
def test_the_ingest_statement_is_prepared_after_a_few_leads(client_for):
    """PostgreSQL plans the hot path's SQL once per connection, not at every request."""
    from django.db import connection

    for n in range(6):
        assert post_json(client_for, "/api/v1/leads", {"name": "Ana", "phone": f"+1415555{n:04d}", "consent": True}).status_code == 201
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ["%INSERT INTO leads_contact%"])
        assert cursor.fetchone()[0] == 1


# --- health and metrics ---------------------------------------------------------


def test_healthz_is_always_ok(client):
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_database_redis_and_broker(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_readyz_is_503_naming_the_broken_dependency(client, settings):
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:1//"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] != "ok"
    assert response.json()["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_readyz_names_a_database_failure_without_its_host_or_user(client, monkeypatch):
    from django.db import OperationalError

    from swiftex import health

    def refused(*args, **kwargs):
        raise OperationalError('connection to server at "db.internal" (10.0.0.5), port 5432 failed: user "swiftex_app"')

    monkeypatch.setattr(health.connection, "cursor", refused)
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["database"] == "OperationalError"
    assert "db.internal" not in response.content.decode() and "swiftex_app" not in response.content.decode()


def test_request_metrics_label_unknown_http_methods_as_other(client):
    client.generic("ABCDEFGHIJ", "/healthz")
    body = client.get("/metrics").content.decode()
    assert 'method="ABCDEFGHIJ"' not in body and 'method="other"' in body


@pytest.mark.django_db
def test_metrics_parse_with_the_prometheus_parser(client_for, client):
    post_json(client_for, "/api/v1/leads", ANA)
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").content.decode())}

    assert "swiftex_http_request_duration_seconds" in families
    assert families["swiftex_outbox_backlog"].samples[0].value >= 1
    assert "swiftex_outbox_oldest_unpublished_age_seconds" in families
    created = [s for s in families["swiftex_leads_ingested"].samples if s.labels.get("outcome") == "created"]
    assert created and created[0].value >= 1


# --- rate limits ----------------------------------------------------------------


@pytest.mark.django_db
def test_rate_limit_answers_429_with_retry_after_and_stores_nothing(settings):
    settings.LEADS_BATCH_MAX_ITEMS = 2  # bucket capacity is max(10s of rate, a batch)
    org, key = org_with_key(ingest_rate_per_minute=6)  # 0.1/s, capacity 2
    client = api_client(key)

    codes = [post_json(client, "/api/v1/leads", {**ANA, "external_id": str(i)}).status_code for i in range(3)]
    limited = post_json(client, "/api/v1/leads", ANA)

    assert codes == [201, 200, 429]
    assert limited.status_code == 429
    assert int(limited["Retry-After"]) >= 1
    assert Submission.objects.count() == 2


@pytest.mark.django_db
def test_rate_limit_keeps_working_per_process_when_redis_is_down(settings):
    settings.LEADS_BATCH_MAX_ITEMS = 2
    settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    # Changing CACHES makes Django drop its cache connections, so the next
    # Redis call goes to the dead port.
    swx_redis.breaker.reset()
    org, key = org_with_key(ingest_rate_per_minute=6)
    client = api_client(key)

    codes = [post_json(client, "/api/v1/leads", {**ANA, "external_id": str(i)}).status_code for i in range(3)]

    assert codes == [201, 200, 429]
    assert not swx_redis.breaker.allow()  # Redis was found down and is being skipped


@pytest.mark.django_db
@pytest.mark.parametrize("error", ["ReadOnlyError", "OutOfMemoryError", "ResponseError"])
def test_a_redis_that_answers_errors_is_fallen_back_from_like_a_dead_one(monkeypatch, error):
    """A replica after a failover (READONLY), maxmemory (OOM) or a failing snapshot (MISCONF)
    answer every write with an error: lead intake must go on, as when Redis is down."""
    import redis.exceptions

    from swiftex import ratelimit

    def refuses(*args, **kwargs):
        raise getattr(redis.exceptions, error)("MISCONF / READONLY / OOM")

    monkeypatch.setattr(ratelimit, "_script", lambda source=None: refuses)
    swx_redis.breaker.reset()
    org, key = org_with_key()
    assert post_json(api_client(key), "/api/v1/leads", ANA).status_code == 201
    assert not swx_redis.breaker.allow()


# --- commands -------------------------------------------------------------------


@pytest.mark.django_db
def test_create_organization_prints_a_working_key_alone_on_the_last_line(capsys):
    call_command("create_organization", "Acme Realty")
    last_line = capsys.readouterr().out.strip().splitlines()[-1]

    assert last_line.startswith("swx_") and " " not in last_line
    assert post_json(api_client(last_line), "/api/v1/leads", ANA).status_code == 201


@pytest.mark.django_db
def test_create_organization_rejects_a_bad_timezone():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="timezone"):
        call_command("create_organization", "Acme", "--timezone", "Mars/Olympus")


def test_a_process_freezes_its_start_up_objects_once_loaded():
    """gunicorn's post-worker-init loads the URLconf (Django would wait for the first request) and
    exempts the loaded app from the collector's full passes (swiftex/heap.py)."""
    import gc
    import importlib.util
    from pathlib import Path

    from django.urls import clear_url_caches, get_resolver

    spec = importlib.util.spec_from_file_location("gunicorn_conf", Path(__file__).resolve().parent.parent / "swiftex" / "gunicorn.conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    clear_url_caches()
    assert "url_patterns" not in vars(get_resolver())
    try:
        conf.post_worker_init(None)
        assert "url_patterns" in vars(get_resolver())
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
