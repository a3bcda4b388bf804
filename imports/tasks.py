"""CSV import tasks (bulk lane). A task does a time slice of chunks and queues the next
slice; `resume_stalled` (beat) picks up an import whose worker died or whose next slice
was lost, so an import always ends as done, stopped, or visibly not moving."""

from __future__ import annotations

from celery import shared_task

from imports import services
from swiftex.db import DB_RETRY


@shared_task(ignore_result=True, **DB_RETRY)
def work(*, import_id: int, chain: int = 0, claim: bool = False) -> None:
    # chain 0: a slice queued before chains existed, for an import started then (its chain is 0 too).
    chain = services.work(import_id, chain=chain, claim=claim)
    if chain is not None:
        work.apply_async(kwargs={"import_id": import_id, "chain": chain})


@shared_task(ignore_result=True)
def resume_stalled() -> None:
    for import_id in services.stalled():
        work.apply_async(kwargs={"import_id": import_id, "claim": True})
