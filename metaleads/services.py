"""Writes for Meta Lead Ads: record leadgen ids, fetch and ingest them, retry, reconcile.

The life of a Meta lead:
1. `record()` (the webhook, or reconciliation) inserts one `MetaLeadgen` row per
   leadgen id, `INSERT … ON CONFLICT DO NOTHING`, and enqueues `fetch_lead` once
   the row is committed. A redelivered webhook inserts nothing and enqueues nothing.
2. `fetch_and_ingest()` (first-touch lane) claims the row with a lease (a
   conditional UPDATE: one worker at a time; a killed worker's lease runs out),
   reads the lead from Graph and ingests it.
3. `ingest()` maps the answers through the form, validates them with
   LeadSerializer and, in ONE transaction, calls `lead_ingest` (external_id =
   leadgen id, so nothing is ever stored twice) and marks the row ingested.
   Invalid data marks it failed with the serializer's errors; nothing else is written.
Transient Graph errors put the row back to pending with a backoff (RetryLater);
after META_FETCH_MAX_ATTEMPTS, or at once on a permanent error, it is failed
with Meta's message. Admin shows all of it and can retry failed rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from conversations.providers.base import ProviderError, jittered_backoff
from leads.serializers import LeadSerializer
from leads.services import lead_ingest
from metaleads import graph, mapping
from metaleads.models import MetaLeadForm, MetaLeadgen, MetaPage

logger = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)  # longer than a Graph call and an ingest; a dead worker's row is free after it
STUCK_AFTER = timedelta(seconds=30)  # a pending row this far past its next attempt lost its task
MAX_RECONCILE_PAGES = 50  # per form and run: 5,000 leads; the rest come next run (the watermark did not move)


class RetryLater(Exception):
    """Graph failed transiently; run the task again after `countdown` seconds."""

    def __init__(self, countdown: float) -> None:
        super().__init__(f"retry in {countdown:.1f}s")
        self.countdown = countdown


@dataclass(frozen=True)
class Leadgen:
    """A leadgen notification as the webhook or the lead list names it."""

    page: MetaPage
    leadgen_id: str
    form_id: str = ""
    ad_id: str = ""
    created_at: datetime | None = None


# --- Recording -------------------------------------------------------------------------------


def record(items: list[Leadgen], *, via: str = MetaLeadgen.Via.WEBHOOK, now: datetime | None = None) -> list[int]:
    """Insert the leadgen ids not seen before (forms auto-created) and enqueue their fetch on commit.

    Returns the ids of the rows inserted. Durable when this returns: a lost enqueue
    (broker down) is made good by the sweep.
    """
    now = now or timezone.now()
    with transaction.atomic():
        forms = _forms_by_id({(item.page, item.form_id) for item in items if item.form_id}, now)
        rows = [
            (item.page.organization_id, item.page.pk, forms.get((item.page.pk, item.form_id)), item.leadgen_id[:64],
             item.ad_id[:64], item.created_at, via, now)
            for item in items
        ]
        inserted = _insert_rows(rows)
        if via == MetaLeadgen.Via.WEBHOOK and inserted:
            transaction.on_commit(lambda: enqueue_fetch(inserted))
    return inserted


def _forms_by_id(pairs: set[tuple[MetaPage, str]], now: datetime) -> dict[tuple[int, str], int]:
    """{(page pk, form_id): MetaLeadForm.pk}, creating (with the defaults) the forms seen for the first time.

    A form id already registered under another page is not used for this page's
    leads (its mapping and consent rule belong to someone else); they get the defaults.
    """
    if not pairs:
        return {}
    MetaLeadForm.objects.bulk_create(
        [MetaLeadForm(page=page, form_id=form_id[:64], created_at=now) for page, form_id in pairs], ignore_conflicts=True,
    )
    found = MetaLeadForm.objects.filter(form_id__in=[form_id[:64] for _, form_id in pairs]).values_list("page_id", "form_id", "pk")
    return {(page_pk, form_id): pk for page_pk, form_id, pk in found}


_INSERT = (
    f"INSERT INTO {MetaLeadgen._meta.db_table} (organization_id, page_id, form_id, leadgen_id, ad_id, meta_created_at, via, "
    "status, attempts, last_error, errors, received_at, next_attempt_at, updated_at) "
    "SELECT o, p, f, l, a, c, v, 'pending', 0, '', '{}'::jsonb, n, n, n FROM (VALUES {values}) AS t(o, p, f, l, a, c, v, n) "
    "ON CONFLICT (leadgen_id) DO NOTHING RETURNING id"
)


def _insert_rows(rows: list[tuple]) -> list[int]:
    if not rows:
        return []
    values = ", ".join(["(%s::bigint, %s::bigint, %s::bigint, %s, %s, %s::timestamptz, %s, %s::timestamptz)"] * len(rows))
    with connection.cursor() as cursor:
        cursor.execute(_INSERT.replace("{values}", values), [v for row in rows for v in row])
        return [row[0] for row in cursor.fetchall()]


def enqueue_fetch(row_ids: list[int]) -> None:
    from metaleads.tasks import fetch_lead  # tasks import this module

    for row_id in row_ids:
        try:
            fetch_lead.apply_async(kwargs={"leadgen_pk": row_id}, retry=False)
        except Exception as exc:  # noqa: BLE001 - the broker is down: the row is pending, the sweep enqueues it
            logger.warning("meta lead %s not enqueued (%s); the sweep will", row_id, type(exc).__name__)
            return


# --- Fetch and ingest ------------------------------------------------------------------------


def claim(row_id: int, *, now: datetime | None = None) -> MetaLeadgen | None:
    """Take a pending row for this worker (one at a time), counting the attempt; None if not ours."""
    now = now or timezone.now()
    taken = MetaLeadgen.objects.filter(pk=row_id, status=MetaLeadgen.Status.PENDING).filter(
        _lease_free(now)
    ).update(lease_until=now + LEASE, attempts=F("attempts") + 1, updated_at=now)
    if not taken:
        return None
    return MetaLeadgen.objects.select_related("page__organization", "form").get(pk=row_id)


def fetch_and_ingest(row_id: int) -> None:
    """The fetch_lead task: read the lead from Graph and ingest it. Raises RetryLater on a transient failure."""
    row = claim(row_id)
    if row is None:
        return
    page = row.page
    if not page.active or not page.access_token:
        fail(row, "the page is inactive or has no access token (admin → Meta pages)")
        return
    try:
        lead = graph.fetch_lead(row.leadgen_id, token=page.access_token)
    except ProviderError as exc:
        error = f"Graph {exc.code}: {exc.title}" if exc.code else f"Graph: {exc.title}"
        if exc.permanent:
            fail(row, error)
        else:
            retry_or_fail(row, error, exc.retry_after)
        return
    ingest_or_retry(row, lead)


def ingest_or_retry(row: MetaLeadgen, lead: dict) -> bool:
    """`ingest`, and if it raises (a database blip, a bug) the row is retried later, then failed
    where admin shows it. True if ingested; RetryLater when a task should retry it."""
    try:
        return ingest(row, lead)
    except Exception as exc:  # noqa: BLE001
        logger.exception("meta lead %s: ingest raised", row.pk)
        retry_or_fail(row, f"ingest error: {type(exc).__name__}: {exc}", None)
        return False


def retry_or_fail(row: MetaLeadgen, error: str, retry_after: float | None) -> None:
    """Back to pending with a backoff (raises RetryLater, unless the wait is longer than a task
    should hold it: then the stuck sweep resumes it), or failed once the attempts are spent."""
    if row.attempts >= settings.META_FETCH_MAX_ATTEMPTS:
        fail(row, f"gave up after {row.attempts} attempts; last: {error}")
        return
    countdown = backoff(row.attempts, retry_after)
    MetaLeadgen.objects.filter(pk=row.pk, status=MetaLeadgen.Status.PENDING).update(
        last_error=error[:500], lease_until=None, next_attempt_at=timezone.now() + timedelta(seconds=countdown),
        updated_at=timezone.now(),
    )
    logger.info("meta lead %s: attempt %d failed (%s), retry in %.1fs", row.pk, row.attempts, error[:120], countdown)
    if countdown > settings.META_FETCH_BACKOFF_MAX_SECONDS:
        # Meta asked for longer than a task should wait unacked in a worker (RabbitMQ closes the
        # channel after its consumer timeout, redelivering everything on it): the stuck sweep
        # resumes the row once next_attempt_at has passed.
        return
    raise RetryLater(countdown)


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Exponential with jitter, capped; never sooner than Meta asked."""
    return jittered_backoff(attempt, base=settings.META_FETCH_BACKOFF_SECONDS, cap=settings.META_FETCH_BACKOFF_MAX_SECONDS,
                            retry_after=retry_after)


def ingest(row: MetaLeadgen, lead: dict) -> bool:
    """Map, validate and ingest a claimed row's Graph lead; True if it is now ingested."""
    org = row.page.organization
    form = row.form or _form_for(row, lead)
    body = mapping.lead_body(lead, form, page_id=row.page.page_id)
    serializer = LeadSerializer(data=body, context={"phone_region": org.phone_region})
    if not serializer.is_valid():
        errors = {field: [str(e) for e in messages] for field, messages in serializer.errors.items()}
        fail(row, "invalid lead: " + "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items()), errors=errors)
        return False
    payload = {"meta_lead": lead, "page_id": row.page.page_id, "via": row.via}
    now = timezone.now()
    created_at = mapping.created_at(lead) or row.meta_created_at
    with transaction.atomic():
        # The person opted in when they filled in the form, not when we read it: an opt-out
        # (STOP) since then is not undone by a lead found later.
        data = replace(serializer.to_lead_input(), consent_given_at=created_at or row.received_at)
        result = lead_ingest(org=org, data=data, payload=payload, received_at=row.received_at)
        MetaLeadgen.objects.filter(pk=row.pk).update(
            status=MetaLeadgen.Status.INGESTED, lead_id=result.lead_id, form_id=form.pk, last_error="", errors={},
            lease_until=None, finished_at=now, updated_at=now, meta_created_at=created_at,
        )
    logger.info("meta lead %s ingested as lead %s (created=%s)", row.pk, result.lead_id, result.created)
    return True


def _form_for(row: MetaLeadgen, lead: dict) -> MetaLeadForm:
    """The row's form when the webhook did not name it: created on first sight, or the defaults
    (unsaved) if the id is missing or registered under another page."""
    form_id = str(lead.get("form_id") or "")[:64]
    if form_id:
        form, _ = MetaLeadForm.objects.get_or_create(form_id=form_id, defaults={"page": row.page})
        if form.page_id == row.page_id:
            return form
    return MetaLeadForm(page=row.page, form_id=form_id)


def fail(row: MetaLeadgen, error: str, *, errors: dict | None = None) -> None:
    now = timezone.now()
    MetaLeadgen.objects.filter(pk=row.pk, status=MetaLeadgen.Status.PENDING).update(
        status=MetaLeadgen.Status.FAILED, last_error=error[:500], errors=errors or {}, lease_until=None, finished_at=now,
        updated_at=now,
    )
    logger.warning("meta lead %s failed: %s", row.pk, error[:200])


def retry_failed(row_ids: list[int]) -> list[int]:
    """Put failed rows back to pending (fresh attempts) and enqueue them; the ids retried."""
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            MetaLeadgen.objects.filter(pk__in=row_ids, status=MetaLeadgen.Status.FAILED)
            .select_for_update().values_list("pk", flat=True)
        )
        MetaLeadgen.objects.filter(pk__in=ids).update(
            status=MetaLeadgen.Status.PENDING, attempts=0, lease_until=None, next_attempt_at=now, finished_at=None, updated_at=now,
        )
        if ids:
            transaction.on_commit(lambda: enqueue_fetch(ids))
    return ids


def stuck(*, now: datetime | None = None, limit: int = 200) -> list[int]:
    """Pending rows whose task was lost (broker down at enqueue): marked as attempted now, then returned."""
    now = now or timezone.now()
    with transaction.atomic():
        ids = list(
            MetaLeadgen.objects.filter(status=MetaLeadgen.Status.PENDING, next_attempt_at__lt=now - STUCK_AFTER)
            .filter(_lease_free(now)).order_by("next_attempt_at").select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:limit]
        )
        MetaLeadgen.objects.filter(pk__in=ids).update(next_attempt_at=now)
    return ids


def _lease_free(now: datetime) -> Q:
    return Q(lease_until__isnull=True) | Q(lease_until__lt=now)
