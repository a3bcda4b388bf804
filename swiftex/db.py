"""Database plumbing beyond Django's ORM.

- `prepared_cursor()`: the cursor for the hot path's hand-written SQL (ingest,
  the first touch, status webhooks).
- `fetch_rows()`: the rows of a hand-written query (reports, queues).
- `connect_params()`: direct psycopg connections, for the few places that must
  not use Django's pool (creating the database, the relay's LISTEN connection).
"""

from __future__ import annotations

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.backends.postgresql.base import ServerBindingCursor


def prepared_cursor():
    """A Django cursor whose parameters are bound on the server, not quoted into the SQL.

    Django's default cursor (client-side binding) sends every statement as new
    text, so PostgreSQL plans it at every call and psycopg quotes each value in
    Python. For the handful of statements run for every lead, profiling showed
    planning alone at ~2.3 ms of PostgreSQL CPU per lead (pg_stat_statements)
    and value quoting at ~8% of the web's CPU. With server-side binding psycopg
    prepares a statement on a connection once it has run it
    DATABASE_PREPARE_THRESHOLD times, and reuses the plan afterwards.

    The SQL must give every parameter a type PostgreSQL can infer (a cast where
    it is an argument of jsonb_build_object or similar). Same transaction and
    error handling as `connection.cursor()`: it is the same connection.
    """
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        return connection._prepare_cursor(ServerBindingCursor(connection.connection))


def fetch_rows(sql: str, params: dict | list) -> list[tuple]:
    """Run hand-written SQL on Django's connection; its rows ([] for a statement that returns none)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def clean_text(value: object, limit: int) -> str:
    """`value` as text PostgreSQL accepts (no NUL), at most `limit` characters."""
    return str(value).replace("\x00", "")[:limit]


def connect_params(dbname: str | None = None) -> dict:
    db = settings.DATABASES["default"]
    return {
        "dbname": dbname or db["NAME"],
        "host": db["HOST"],
        "port": db["PORT"],
        "user": db["USER"],
        "password": db["PASSWORD"],
        "connect_timeout": 5,
    }


# Celery task options for work that only touches the database: a blip (a failover, a
# dropped connection) is retried with exponential backoff and jitter, up to 8 times.
DB_RETRY = {
    "autoretry_for": (OperationalError, InterfaceError), "retry_backoff": 1, "retry_backoff_max": 30,
    "retry_jitter": True, "max_retries": 8,
}
