"""CRM sync tasks, on the bulk lane (the lowest priority).

`dispatch` runs every CRM_SYNC_TICK_SECONDS (beat): it returns contacts whose
push died with its worker to the queue, and for each organization with due
contacts enqueues as many `push` tasks as its rate allows in one tick (each
claims its own batch of up to 100, so parallel pushes never overlap). A push
that finds nothing due, or no token, just ends; the next tick looks again.
"""

from __future__ import annotations

import math
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from swiftex.db import DB_RETRY
from crmsync import push as pushes
from crmsync import queue
from crmsync.adapters.base import MAX_BATCH
from crmsync.models import CrmPush
from leads.models import Organization


@shared_task(ignore_result=True)
def dispatch() -> None:
    queue.reap_stuck()
    due = dict(queue.due_by_organization())
    if not due:
        return
    rates = dict(Organization.objects.filter(pk__in=due).values_list("pk", "crm_requests_per_second"))
    for org_id, count in due.items():
        per_tick = max(1, math.floor(rates.get(org_id, 1) * settings.CRM_SYNC_TICK_SECONDS))
        for _ in range(min(per_tick, math.ceil(count / MAX_BATCH))):
            push.apply_async(kwargs={"organization_id": org_id}, expires=max(5.0, settings.CRM_SYNC_TICK_SECONDS * 4))


@shared_task(ignore_result=True, acks_late=True, reject_on_worker_lost=True, **DB_RETRY)
def push(*, organization_id: int) -> None:
    pushes.push_due(organization_id)


@shared_task(ignore_result=True)
def prune_push_log() -> None:
    """The push log is for recent metrics and troubleshooting: a week is kept."""
    CrmPush.objects.filter(at__lt=timezone.now() - timedelta(days=7)).delete()
