"""`manage.py meta_reconcile`: list Meta's leads now and ingest any whose webhook never came.

The scheduler does the same every META_RECONCILE_SECONDS on the bulk lane;
this runs it in the foreground, for every form or the ones named, and can
reach further back than the watermark with --since (a backfill). A listing
longer than one run's pages is followed to its end here.
"""

from __future__ import annotations

from datetime import datetime, timezone

from django.core.management.base import BaseCommand, CommandError

from metaleads import reconcile
from metaleads.models import MetaLeadForm

MAX_RUNS = 200  # per form: 200 × 50 pages × 100 leads, a million leads; the scheduler goes on from there


class Command(BaseCommand):
    help = "Reconcile Meta Lead Ads: ingest the leads of each form that no webhook delivered."

    def add_arguments(self, parser):
        parser.add_argument("--form", action="append", default=[], help="A form id (repeatable); default: every form to reconcile.")
        parser.add_argument("--organization", type=int, help="Only this organization's forms (its id).")
        parser.add_argument("--since", help="Read from this UTC time (ISO 8601, e.g. 2026-11-01T00:00) instead of the watermark.")

    def handle(self, *args, form: list[str], organization: int | None, since: str | None, **options):
        forms = MetaLeadForm.objects.select_related("page").order_by("pk")
        forms = forms.filter(form_id__in=form) if form else forms.filter(reconcile=True, page__active=True)
        if organization is not None:
            forms = forms.filter(page__organization_id=organization)
        missing = set(form) - {f.form_id for f in forms}
        if missing:
            raise CommandError(f"no such form: {', '.join(sorted(missing))} (admin → Meta lead forms)")
        start = _parse_since(since) if since else None
        failed = 0
        for item in forms:
            result = reconcile.reconcile_form(item, since=start, foreground=True)
            self.stdout.write(str(result))
            for _ in range(MAX_RUNS - 1):  # in the foreground, a long listing is read to its end
                if not result.more:
                    break
                result = reconcile.reconcile_form(item, foreground=True)
                self.stdout.write(str(result))
            failed += bool(result.error or result.more)
        if failed:
            raise CommandError(f"{failed} form(s) could not be reconciled completely; see the errors above")


def _parse_since(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--since {text!r} is not an ISO 8601 time such as 2026-11-01T00:00") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
