"""`manage.py demo_organization`: the demo organization for `make up`, with a fresh key."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from leads.models import ApiKey, Organization
from leads.services import organization_create, organization_defaults

DEMO_NAME = "Demo"


class Command(BaseCommand):
    help = "Ensure the demo organization exists and print a new API key for it (last line)."

    def handle(self, *args, **options):
        org = Organization.objects.filter(name=DEMO_NAME).order_by("pk").first()
        if org is None:
            org, raw_key = organization_create(name=DEMO_NAME, ingest_rate_per_minute=30000)
        else:
            # Keys are stored hashed, so an old one cannot be shown again: issue another.
            _, raw_key = ApiKey.issue(org, name="make up")
            # Credentials the environment now provides (e.g. `make up FAKE_PROVIDERS=1`)
            # fill the ones still empty; values set in admin are kept.
            missing = {name: value for name, value in organization_defaults().items() if value and getattr(org, name) == ""}
            if missing:
                Organization.objects.filter(pk=org.pk).update(**missing)
        self.stdout.write(f"Demo organization id {org.pk}. API key:")
        self.stdout.write(raw_key)
