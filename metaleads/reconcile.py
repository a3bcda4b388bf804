"""Reconciliation: the safety net under the leadgen webhook.

For each form, list the leads Meta created since the form's watermark minus an
overlap margin (clock skew and Meta's own indexing delay never skip a lead),
following the cursor to the last page. A lead with no row yet gets one
(`via=reconcile`) and is ingested from the listing itself: it already carries
field_data, so no second fetch. A row still pending and not held by a worker
(its task lost) is ingested the same way. The watermark moves only once every
page was read.

A run reads at most MAX_RECONCILE_PAGES pages. A listing longer than that, or
one cut short by an error, is not started over next time: the form keeps where
the pass stood (`reconcile_resume`: the window's start, the cursor of the next
page, the newest lead seen, when the pass began), the next run follows that
cursor, and a form with more to read is due again at once. Graph lists newest
first, so starting over would read the same newest pages for ever and never
reach the older leads of a busy window. A cursor Meta no longer accepts
starts the window over.
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
    more: bool = False  # the pass stopped with pages left; the next run continues it

    def __str__(self) -> str:
        text = f"form {self.form_id}: {self.listed} listed since {self.since:%Y-%m-%d %H:%M:%S}, {self.recorded} missed"
        text += f", {self.ingested} ingested, {self.failed} failed"
        text += f"; stopped after {services.MAX_RECONCILE_PAGES} pages, the next run goes on from there" if self.more else ""
        return text + (f"; error: {self.error}" if self.error else "")


@dataclass
class Pass:
    """Where one reading of a form's window stands; saved on the form between runs."""

    since: datetime
    began: datetime
    after: str | None = None
    newest: datetime | None = None
    resumed: bool = False

    def saved(self) -> dict:
        return {"since": self.since.isoformat(), "began": self.began.isoformat(), "after": self.after,
                "newest": self.newest.isoformat() if self.newest else None}

    @classmethod
    def load(cls, saved) -> Pass | None:
        try:
            return cls(since=datetime.fromisoformat(saved["since"]), began=datetime.fromisoformat(saved["began"]),
                       after=saved["after"] or None, newest=datetime.fromisoformat(saved["newest"]) if saved["newest"] else None,
                       resumed=True)
        except (TypeError, KeyError, ValueError):
            return None  # nothing saved, or something unreadable: start the window over


def overlap() -> timedelta:
    return timedelta(seconds=settings.META_RECONCILE_OVERLAP_SECONDS)


def reconcile_form(form: MetaLeadForm, *, since: datetime | None = None, now: datetime | None = None,
                   foreground: bool = False) -> Result:
    """List and ingest one form's leads; `since` overrides the watermark (a manual backfill).

    Goes on from where the form's last pass stopped, if it did; a backfill starts its own
    pass, reaching back at least as far as the one it replaces. `foreground` (the command, which
    goes on itself): a pass left unfinished is not made due for the scheduler meanwhile.
    """
    now = now or timezone.now()
    page = form.page
    saved = Pass.load(form.reconcile_resume)
    if since is not None:
        reading = Pass(since=min(since, saved.since) if saved else since, began=now)
    else:
        reading = saved or Pass(since=(form.watermark or form.created_at) - overlap(), began=now)
    result = Result(form.form_id, since=reading.since)
    if not page.active or not page.access_token:
        result.error = "the page is inactive or has no access token"
        _finish(form, now, result, saved, foreground)
        return result
    try:
        for _ in range(services.MAX_RECONCILE_PAGES):
            listing = graph.list_leads(form.form_id, token=page.access_token, since=reading.since, after=reading.after)
            for lead in listing.leads:
                reading.newest = max(filter(None, (reading.newest, mapping.created_at(lead))), default=None)
                _one(form, lead, result)
            reading.after = listing.after
            if reading.after is None:
                break
        else:
            result.more = True
    except ProviderError as exc:
        result.error = f"Graph {exc.code}: {exc.title}" if exc.code else f"Graph: {exc.title}"
        if reading.resumed and reading.after and exc.permanent and exc.code == "100":
            # Meta refused the saved cursor (expired, or from another listing): read the window again.
            result.error += "; the saved cursor was refused, so the window is read again from its start"
            reading = None
    except Exception as exc:  # noqa: BLE001 - e.g. the database went away: the run ends where the form shows it
        logger.exception("meta reconcile of form %s stopped", form.form_id)
        result.error = f"stopped by {type(exc).__name__}; the next run goes on from the last page read"
    _finish(form, now, result, reading, foreground)
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
    try:  # one lead's database error or bug must not stop the form's run
        ingested = services.ingest_or_retry(row, lead)
    except services.RetryLater:
        ingested = False  # no task to retry in here: the stuck sweep resumes the row after its backoff
    if ingested:
        result.ingested += 1
    else:
        result.failed += 1


def _finish(form: MetaLeadForm, now: datetime, result: Result, reading: Pass | None, foreground: bool) -> None:
    """Save how the run ended: the watermark moves when a pass is complete, else the pass is kept."""
    updates = {"last_reconciled_at": now, "last_reconcile_error": result.error[:500]}
    complete = reading is not None and not result.error and not result.more
    if complete:
        # Never behind what was seen, and walking forward with the clock even when nothing came
        # (from when the pass began: a lead created while it was under way may not be listed in it).
        candidates = [form.watermark, reading.newest, reading.began - overlap()]
        updates["watermark"] = max(c for c in candidates if c is not None)
        updates["reconcile_resume"] = None
    else:
        # Only a pass that read at least one page has anywhere to go on from.
        updates["reconcile_resume"] = reading.saved() if reading is not None and (reading.after or reading.resumed) else None
    if result.more:
        # Due at the next sweep, not a whole interval later; while the command follows the
        # listing itself, not at all (two runs would read the same pages and race for the cursor).
        # (From the end of the run, not its start: 50 pages can take longer than the interval.)
        updates["next_reconcile_at"] = timezone.now() + timedelta(seconds=settings.META_RECONCILE_SECONDS) if foreground else now
    form.reconcile_resume = updates["reconcile_resume"]
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
