"""E-mail for reps who asked for it, sent from the bulk lane, never from a request.

A notification that wants e-mail is stored PENDING with the assignment (same
transaction); `send_pending` claims a batch with SKIP LOCKED, sends each
through Django's e-mail backend (EMAIL_* settings, with EMAIL_TIMEOUT) and
marks it SENT, or FAILED with the error for a person to see in admin (and
retry from there). In-app, the rep sees every notification either way.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from routing.models import Notification

logger = logging.getLogger(__name__)


def send_pending(*, batch_size: int = 50) -> int:
    """Send up to `batch_size` pending e-mails; returns how many went out."""
    sent = 0
    with transaction.atomic():
        batch = list(
            Notification.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("rep__user").filter(email=Notification.Email.PENDING).order_by("created_at")[:batch_size]
        )
        for notification in batch:
            try:
                send_mail(
                    # One line: a line break (from a lead's name) makes Django refuse the header.
                    subject=" ".join(f"[Swiftex] {notification.text}".split()),
                    message=f"{notification.text}\n\n{settings.PUBLIC_BASE_URL}/app/leads/{notification.lead_id}\n",
                    from_email=None, recipient_list=[notification.rep.user.email],
                )
            except Exception as exc:  # noqa: BLE001 - any backend error ends visible on the row
                logger.warning("notification %s e-mail failed: %s", notification.pk, type(exc).__name__)
                notification.email, notification.email_error = Notification.Email.FAILED, f"{type(exc).__name__}: {exc}"[:300]
            else:
                notification.email, notification.email_error = Notification.Email.SENT, ""
                sent += 1
        Notification.objects.bulk_update(batch, ["email", "email_error"])
    return sent
