"""Direct psycopg connections, for the few places that must not use Django's pool
(creating the database, the relay's long-lived LISTEN connection)."""

from __future__ import annotations

from django.conf import settings


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
