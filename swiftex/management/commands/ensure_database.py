"""Create the configured PostgreSQL database if it does not exist yet.

Connects with psycopg directly (not through Django's pool) to the server's
`postgres` maintenance database, so a missing database or a server that is
down produces a clear message instead of a pool timeout.
"""

from __future__ import annotations

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql

from swiftex.db import connect_params


class Command(BaseCommand):
    help = "Create the database named in DATABASE_URL when it is missing."
    requires_system_checks = []

    def handle(self, *args, **options):
        db = settings.DATABASES["default"]
        try:
            with psycopg.connect(autocommit=True, **connect_params(dbname="postgres")) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone()
                if exists:
                    self.stdout.write(f"database {db['NAME']} exists")
                    return
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
        except psycopg.OperationalError as exc:
            raise CommandError(f"cannot reach PostgreSQL at {db['HOST']}:{db['PORT']} as {db['USER']}: {exc}") from exc
        self.stdout.write(f"database {db['NAME']} created")
