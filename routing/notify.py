"""E-mail for reps who asked for it, sent from the bulk lane, never from a request.

A notification that wants e-mail is stored PENDING with the assignment (same
transaction). `send_pending` claims a batch (SKIP LOCKED) and marks it SENDING
in a short transaction, then sends each over one SMTP connection (EMAIL_*
settings, with EMAIL_TIMEOUT) and marks it SENT, or FAILED with the error, the
moment it is done. So a slow mail server or a killed worker never sends an
e-mail twice: a row left SENDING (its worker died mid-send) is marked FAILED
with "may have arrived" after STUCK_AFTER, for a person to see in admin (and
retry from there). In-app, the rep sees every notification either way.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.utils import timezone

from routing.models import Notification

logger = logging.getLogger(__name__)

STUCK_AFTER = timedelta(minutes=15)  # one e-mail takes at most a few EMAIL_TIMEOUTs: SENDING this long lost its worker


def send_pending(*, batch_size: int = 20) -> int:
    """Send up to `batch_size` pending e-mails; returns how many went out."""
    _fail_stuck()
    batch = _claim(batch_size)
    sent = 0
    connection = get_connection()
    try:
        for notification in batch:
            message = EmailMessage(
                # One line: a line break (from a lead's name) makes Django refuse the header.
                subject=" ".join(f"[Swiftex] {notification.text}".split()),
                body=f"{notification.text}\n\n{settings.PUBLIC_BASE_URL}/app/leads/{notification.lead_id}\n",
                to=[notification.rep.user.email], connection=connection,
            )
            # Stamped per e-mail: the stuck sweep measures from this one's start, not the batch's.
            Notification.objects.filter(pk=notification.pk).update(email_started_at=timezone.now())
            try:
                message.send()
            except Exception as exc:  # noqa: BLE001 - any backend error ends visible on the row
                logger.warning("notification %s e-mail failed: %s", notification.pk, type(exc).__name__)
                _settle(notification, Notification.Email.FAILED, f"{type(exc).__name__}: {exc}")
                connection.close()  # the next message opens a fresh one
            else:
                _settle(notification, Notification.Email.SENT, "")
                sent += 1
    finally:
        connection.close()
    return sent


def _claim(batch_size: int) -> list[Notification]:
    with transaction.atomic():
        batch = list(
            Notification.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("rep__user").filter(email=Notification.Email.PENDING).order_by("created_at")[:batch_size]
        )
        Notification.objects.filter(pk__in=[n.pk for n in batch]).update(
            email=Notification.Email.SENDING, email_started_at=timezone.now())
    return batch


def _settle(notification: Notification, state: str, error: str) -> None:
    Notification.objects.filter(pk=notification.pk, email=Notification.Email.SENDING).update(email=state, email_error=error[:300])


def _fail_stuck() -> int:
    return Notification.objects.filter(
        email=Notification.Email.SENDING, email_started_at__lt=timezone.now() - STUCK_AFTER,
    ).update(email=Notification.Email.FAILED,
             email_error="not confirmed: the worker stopped while sending, so it may have arrived; retry only if it did not")
