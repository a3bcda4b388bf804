"""`manage.py create_organization NAME`: the API key is printed alone on the last line."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from leads.services import organization_create


class Command(BaseCommand):
    help = "Create an organization and print its API key (shown once) on the last line."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--timezone", default="UTC")
        parser.add_argument("--rate-per-minute", type=int, default=None, help="Ingest rate limit (leads per minute).")

    def handle(self, *args, name: str, timezone: str, rate_per_minute: int | None, **options):
        fields = {"timezone": timezone}
        if rate_per_minute is not None:
            if rate_per_minute < 1:
                raise CommandError("--rate-per-minute must be at least 1")
            fields["ingest_rate_per_minute"] = rate_per_minute
        try:
            org, raw_key = organization_create(name=name.strip(), **fields)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())) from exc
        self.stdout.write(f"Created organization {org.name!r} (id {org.pk}). API key (shown once):")
        self.stdout.write(raw_key)
