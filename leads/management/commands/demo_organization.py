"""`manage.py demo_organization`: the demo organization for `make up`, with a fresh key,
and a `demo` login (a new password each run) for the rep pages and admin."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth.models import User
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
        password = self._demo_login(org)
        self.stdout.write(f"Rep pages {settings.PUBLIC_BASE_URL}/app/ and admin {settings.PUBLIC_BASE_URL}/admin/: log in as demo / {password}")
        self.stdout.write(f"Demo organization id {org.pk}. API key:")
        self.stdout.write(raw_key)

    def _demo_login(self, org: Organization) -> str:
        """A superuser who is also the demo organization's manager and fallback owner, so every
        demo lead is assigned to someone who can open it. Returns its new password."""
        from routing.models import Rep  # routing builds on leads

        user, _ = User.objects.get_or_create(username="demo", defaults={"first_name": "Demo", "last_name": "Manager"})
        password = secrets.token_urlsafe(9)
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        rep, _ = Rep.objects.get_or_create(user=user, defaults={"organization": org, "role": Rep.Role.MANAGER, "working_days": "1,2,3,4,5,6,7"})
        if org.fallback_owner_id is None and rep.organization_id == org.pk:
            Organization.objects.filter(pk=org.pk).update(fallback_owner=rep)
        return password
