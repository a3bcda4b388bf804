"""Conversation tasks. Thin: ids in, one service call, nothing returned.

Retry policy, in one place:
- the database blipped (OperationalError/InterfaceError): retried with
  exponential backoff and jitter, up to 8 times;
- a provider failed transiently (5xx, rate limit, refused): the service marks
  the message QUEUED and raises RetryLater with its backoff (honouring
  Retry-After); the task runs again and re-claims the message. The attempt
  cap is on the message (SEND_MAX_ATTEMPTS), after which it is FAILED and
  shown as such on the timeline and in admin;
- permanent provider errors are never retried: the message is FAILED and
  a WhatsApp greeting falls back to SMS.
"""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from conversations import followups, receipts, rep_messages, replies, services
from conversations.models import WebhookDelivery
from swiftex.db import DB_RETRY


def _retrying(task, service, *args, **kwargs) -> None:
    """Run the service; a transient provider failure runs the task again after its backoff
    (no retry cap here: the message's attempts are capped, SEND_MAX_ATTEMPTS)."""
    try:
        service(*args, **kwargs)
    except services.RetryLater as exc:
        raise task.retry(countdown=exc.countdown, max_retries=None) from None


@shared_task(bind=True, ignore_result=True, **DB_RETRY)
def first_touch(self, *, event_id: str, lead_id: int, published_at: str | None = None) -> None:
    _retrying(self, services.first_touch, event_id=event_id, lead_id=lead_id, published_at=published_at)


@shared_task(bind=True, ignore_result=True, **DB_RETRY)
def greet_imported(self, *, event_id: str, lead_id: int) -> None:
    """The first touch of a lead from a CSV import the admin chose to greet (bulk lane, at its pace)."""
    _retrying(self, services.first_touch, event_id=event_id, lead_id=lead_id)


@shared_task(bind=True, ignore_result=True, **DB_RETRY)
def greeting_fallback(self, *, greeting_id: int) -> None:
    _retrying(self, services.greeting_fallback, greeting_id=greeting_id)


@shared_task(ignore_result=True, **DB_RETRY)
def apply_receipts() -> None:
    receipts.apply_pending()


@shared_task(ignore_result=True)
def greeting_sweep() -> None:
    services.expire_unsent_greetings()
    for greeting_id in services.stalled_greetings():
        greeting_fallback.apply_async(kwargs={"greeting_id": greeting_id})


@shared_task(ignore_result=True)
def prune_webhook_deliveries() -> None:
    cutoff = timezone.now() - timedelta(hours=settings.WEBHOOK_RETENTION_HOURS)
    WebhookDelivery.objects.filter(received_at__lt=cutoff).delete()


# --- Replies (conversations lane) ---------------------------------------------------------


@shared_task(bind=True, ignore_result=True, **DB_RETRY)
def flush_replies(self, *, conversation_id: int, from_database: bool = False) -> None:
    """Answer a conversation's debounced burst when due (or, `from_database`, every unanswered message)."""
    try:
        wait = replies.answer_all(conversation_id) if from_database else replies.flush(conversation_id)
    except replies.ReplyRetryLater as exc:
        send_reply.apply_async(kwargs={"reply_id": exc.reply_id}, countdown=exc.countdown)
        return
    if wait:  # the burst grew after this flush was scheduled: come back at its new deadline
        flush_replies.apply_async(kwargs={"conversation_id": conversation_id}, countdown=wait)


@shared_task(bind=True, ignore_result=True, **DB_RETRY)
def send_reply(self, *, reply_id: int) -> None:
    _retrying(self, replies.resume, reply_id)


@shared_task(bind=True, ignore_result=True, **DB_RETRY)
def confirm_opt_out(self, *, message_id: int) -> None:
    try:
        replies.confirm_opt_out(message_id)
    except replies.ReplyRetryLater as exc:
        send_reply.apply_async(kwargs={"reply_id": exc.reply_id}, countdown=exc.countdown)


@shared_task(bind=True, ignore_result=True, **DB_RETRY)
def send_rep_message(self, *, message_id: int) -> None:
    _retrying(self, rep_messages.send, message_id)


@shared_task(ignore_result=True)
def reply_sweep() -> None:
    """Answer messages whose debounce state was lost, resume replies whose worker died (and
    give up those still unfinished after an hour), and send reps' messages whose task never reached the broker or was lost between retries."""
    for conversation_id in replies.orphaned_conversations():
        flush_replies.apply_async(kwargs={"conversation_id": conversation_id, "from_database": True})
    replies.give_up_stale_replies()
    for reply_id in replies.unfinished_replies():
        send_reply.apply_async(kwargs={"reply_id": reply_id})
    for message_id in rep_messages.never_published():
        send_rep_message.apply_async(kwargs={"message_id": message_id})


# --- Scheduled jobs (follow-up lane) -----------------------------------------------------------


@shared_task(ignore_result=True, **DB_RETRY)
def dispatch_scheduled_jobs() -> None:
    """The scheduler's tick: enqueue what is due, oldest first, within the in-flight cap."""
    for job_id in followups.dispatch_due():
        run_scheduled_job.apply_async(kwargs={"job_id": job_id})


@shared_task(bind=True, ignore_result=True, **DB_RETRY)
def run_scheduled_job(self, *, job_id: int) -> None:
    _retrying(self, followups.run, job_id)
