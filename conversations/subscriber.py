"""Conversations' event subscriber: `lead.created` → greet; `message.failed` → SMS fallback.

Runs one event at a time in the first-touch lane's worker pool (`in_pool` in
SWIFTEX_SUBSCRIBERS): the greeting starts the moment its event arrives, with
no second trip through RabbitMQ as a task. The event is acked when the
handler returns. What cannot finish here (a provider asked to retry later, a
database blip, anything unexpected) is handed to the matching Celery task,
whose retry policy (`conversations/tasks.py`) takes it from there. If even
that hand-over fails (the broker is down), the handler raises and the event is
requeued.
"""

from __future__ import annotations

import logging

from conversations import services
from conversations.models import Channel
from conversations.tasks import first_touch, greeting_fallback
from swiftex.events.consumer import MalformedEvent

logger = logging.getLogger(__name__)

HANDOVER_DELAY = 1.0  # seconds before the task retries work that failed here unexpectedly


def handle_event(event: dict) -> None:
    data = event["data"]
    if event["type"] == "lead.created":
        if not isinstance(data.get("lead_id"), int):
            raise MalformedEvent(event["id"], "lead.created without an integer lead_id")
        kwargs = {"event_id": event["id"], "lead_id": data["lead_id"], "published_at": event.get("published_at")}
        _run_now(services.first_touch, first_touch, kwargs)
    elif event["type"] == "message.failed" and data.get("channel") == Channel.WHATSAPP and isinstance(data.get("greeting_id"), int):
        _run_now(services.greeting_fallback, greeting_fallback, {"greeting_id": data["greeting_id"]})


def _run_now(service, task, kwargs: dict) -> None:
    """Do the task's work here and now; what cannot be finished now becomes the task."""
    try:
        service(**kwargs)
    except services.RetryLater as exc:
        task.apply_async(kwargs=kwargs, countdown=exc.countdown)
    except Exception:
        logger.exception("%s(%s) failed; handed to the task to retry", task.name, kwargs)
        task.apply_async(kwargs=kwargs, countdown=HANDOVER_DELAY)
