"""Reconciliation: the safety net under the leadgen webhook.

For each form, list the leads Meta created since the form's watermark minus an
overlap margin (clock skew and Meta's own indexing delay never skip a lead),
following the cursor to the last page. A lead with no row yet gets one
(`via=reconcile`) and is ingested from the listing itself: it already carries
field_data, so no second fetch. A row still pending and not held by a worker
(its task lost) is ingested the same way. The watermark moves only once every
page was read, so a failed run repeats its window next time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from conversations.providers.base import ProviderError
from metaleads import graph, mapping, services
from metaleads.models import MetaLeadForm, MetaLeadgen

logger = logging.getLogger(__name__)


@dataclass
class Result:
    form_id: str
    listed: int = 0
    recorded: int = 0  # leads whose webhook never came
    ingested: int = 0
    failed: int = 0
    error: str = ""
    since: datetime | None = None
    leadgen_ids: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"form {self.form_id}: {self.listed} listed since {self.since:%Y-%m-%d %H:%M:%S}, {self.recorded} missed"
        text += f", {self.ingested} ingested, {self.failed} failed"
        return text + (f"; error: {self.error}" if self.error else "")


def overlap() -> timedelta:
    return timedelta(seconds=settings.META_RECONCILE_OVERLAP_SECONDS)


def reconcile_form(form: MetaLeadForm, *, since: datetime | None = None, now: datetime | None = None) -> Result:
    """List and ingest one form's leads; `since` overrides the watermark (a manual backfill)."""
    now = now or timezone.now()
    page = form.page
    start = since or (form.watermark or form.created_at) - overlap()
    result = Result(form.form_id, since=start)
    if not page.active or not page.access_token:
        result.error = "the page is inactive or has no access token"
        _finish(form, now, result, newest=None)
        return result
    newest: datetime | None = None
    after: str | None = None
    try:
        for _ in range(services.MAX_RECONCILE_PAGES):
            listing = graph.list_leads(form.form_id, token=page.access_token, since=start, after=after)
            for lead in listing.leads:
                created = mapping.created_at(lead)
                newest = max(filter(None, (newest, created)), default=None)
                _one(form, lead, result)
            after = listing.after
            if after is None:
                break
        else:
            result.error = f"stopped after {services.MAX_RECONCILE_PAGES} pages; the rest next run"
    except ProviderError as exc:
        result.error = f"Graph {exc.code}: {exc.title}" if exc.code else f"Graph: {exc.title}"
    _finish(form, now, result, newest)
    return result


def _one(form: MetaLeadForm, lead: dict, result: Result) -> None:
    leadgen_id = str(lead.get("id") or "")
    if not leadgen_id:
        return
    result.listed += 1
    item = services.Leadgen(page=form.page, leadgen_id=leadgen_id, form_id=form.form_id, ad_id=str(lead.get("ad_id") or ""),
                            created_at=mapping.created_at(lead))
    if services.record([item], via=MetaLeadgen.Via.RECONCILE):
        result.recorded += 1
        result.leadgen_ids.append(leadgen_id)
    row_id = MetaLeadgen.objects.filter(leadgen_id=leadgen_id, status=MetaLeadgen.Status.PENDING).values_list("pk", flat=True).first()
    row = services.claim(row_id) if row_id else None
    if row is None:
        return  # ingested, failed (admin retries those), or a worker is on it right now
    if services.ingest(row, lead):
        result.ingested += 1
    else:
        result.failed += 1


def _finish(form: MetaLeadForm, now: datetime, result: Result, newest: datetime | None) -> None:
    updates = {"last_reconciled_at": now, "last_reconcile_error": result.error[:500]}
    if not result.error:
        # Never behind what was seen, and walking forward with the clock even when nothing came.
        candidates = [form.watermark, newest, now - overlap()]
        updates["watermark"] = max(c for c in candidates if c is not None)
    MetaLeadForm.objects.filter(pk=form.pk).update(**updates)
    (logger.warning if result.error else logger.info)("meta reconcile %s", result)


def due_forms(*, now: datetime | None = None) -> list[int]:
    """Forms whose turn it is (each claimed for one interval, so a slow run is not started twice)."""
    now = now or timezone.now()
    ids = list(
        MetaLeadForm.objects.filter(reconcile=True, page__active=True)
        .filter(Q(next_reconcile_at__isnull=True) | Q(next_reconcile_at__lte=now))
        .order_by("next_reconcile_at").values_list("pk", flat=True)[:500]
    )
    claimed = []
    for form_pk in ids:
        if MetaLeadForm.objects.filter(pk=form_pk).filter(Q(next_reconcile_at__isnull=True) | Q(next_reconcile_at__lte=now)).update(
            next_reconcile_at=now + timedelta(seconds=settings.META_RECONCILE_SECONDS)
        ):
            claimed.append(form_pk)
    return claimed
