"""Routing tasks, on the bulk lane: escalation and reps' e-mail, both every few seconds from beat."""

from __future__ import annotations

from celery import shared_task

from routing import notify, services
from swiftex.db import DB_RETRY


@shared_task(ignore_result=True, **DB_RETRY)
def escalate() -> None:
    services.escalate_due()


@shared_task(ignore_result=True, **DB_RETRY)
def send_notification_emails() -> None:
    notify.send_pending()
