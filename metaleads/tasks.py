"""Meta Lead Ads tasks. Thin: ids in, one service call, nothing returned.

Retry policy:
- `fetch_lead` (first-touch lane: a live lead's greeting clock is running):
  transient Graph errors (5xx, timeouts, codes 1, 2, 4, 17, 32, 341, 613, 80001)
  put the row back to pending and the task runs again after exponential
  backoff with jitter (META_FETCH_BACKOFF_SECONDS doubling, capped at
  META_FETCH_BACKOFF_MAX_SECONDS, never sooner than Retry-After). The cap is on
  the row (META_FETCH_MAX_ATTEMPTS), after which it is failed, visible in
  admin with Meta's message. Permanent errors (190, 100, 10, 200, …) fail it at
  once. acks_late + reject_on_worker_lost (settings): a killed worker's message
  is redelivered, and the row's lease lets only one worker fetch at a time.
- `sweep` (bulk lane, every META_SWEEP_SECONDS): re-enqueues pending rows whose
  task was lost, and starts reconciliation for the forms due.
- a database blip: retried with backoff and jitter (DB_RETRY).
"""

from __future__ import annotations

from celery import shared_task

from metaleads import reconcile, services
from metaleads.models import MetaLeadForm
from swiftex.db import DB_RETRY


@shared_task(bind=True, ignore_result=True, **DB_RETRY)
def fetch_lead(self, *, leadgen_pk: int) -> None:
    try:
        services.fetch_and_ingest(leadgen_pk)
    except services.RetryLater as exc:
        raise self.retry(countdown=exc.countdown, max_retries=None) from None


@shared_task(ignore_result=True, **DB_RETRY)
def sweep() -> None:
    services.enqueue_fetch(services.stuck())
    for form_pk in reconcile.due_forms():
        reconcile_form.apply_async(kwargs={"form_pk": form_pk})


@shared_task(ignore_result=True, **DB_RETRY)
def reconcile_form(*, form_pk: int) -> None:
    form = MetaLeadForm.objects.select_related("page").filter(pk=form_pk).first()
    if form is not None:
        reconcile.reconcile_form(form)
