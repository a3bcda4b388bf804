"""`manage.py analytics_rebuild [--organization ID] [--since YYYY-MM-DD] [--reset]`: recompute facts and roll-ups.

For leads captured before analytics was deployed (a backfill), or after
facts were lost or edited by hand. Leads are refreshed in chunks of 1,000,
each its own transaction, so the dashboard stays usable while it runs; with
`--reset` the scope's facts and roll-ups are deleted first, so numbers are
partial until the command ends. The analytics subscriber keeps running
meanwhile: the per-organization lock makes the two take turns.
"""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from analytics import services
from analytics.models import HourlyStat, LeadFact
from leads.models import Lead, Organization

CHUNK = 1000


class Command(BaseCommand):
    help = "Recompute speed-to-lead facts and hourly roll-ups from the leads, messages and timeline."

    def add_arguments(self, parser):
        parser.add_argument("--organization", type=int, help="Only this organization's leads.")
        parser.add_argument("--since", type=dt.date.fromisoformat, help="Only leads captured on or after this date (UTC), YYYY-MM-DD.")
        parser.add_argument("--reset", action="store_true", help="Delete the scope's facts and roll-ups first.")

    def handle(self, *args, organization: int | None, since: dt.date | None, reset: bool, **options):
        leads = Lead.objects.all()
        facts, stats = LeadFact.objects.all(), HourlyStat.objects.all()
        if organization is not None:
            if not Organization.objects.filter(pk=organization).exists():
                raise CommandError(f"No organization {organization}.")
            leads, facts, stats = (qs.filter(organization_id=organization) for qs in (leads, facts, stats))
        if since is not None:
            start = dt.datetime.combine(since, dt.time(), dt.timezone.utc)
            leads, facts, stats = leads.filter(captured_at__gte=start), facts.filter(captured_at__gte=start), stats.filter(hour__gte=start)
        if reset:
            with transaction.atomic():
                # The subscriber's lock, for every organization in scope: a refresh that read a fact
                # before the delete would otherwise add its difference to the emptied roll-up.
                services.lock_organizations(organization)
                self.stdout.write(f"deleted {facts.delete()[0]} facts and {stats.delete()[0]} hourly rows")
        done, last = 0, 0
        while ids := list(leads.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:CHUNK]):
            services.refresh(ids)
            done, last = done + len(ids), ids[-1]
            self.stdout.write(f"\r{done} leads refreshed", ending="")
        self.stdout.write(f"\r{done} leads refreshed")
