"""Conversations' event subscribers.

- `conversations` (in the first-touch lane's pool): `lead.created` → greet;
  `message.failed` → SMS fallback (below);
- `replies` (batches, conversations lane): `message.received` → the message
  joins its conversation's debounced burst, and a flush is scheduled for the
  burst's deadline; a STOP gets its one confirmation;
- `followups` (batches, follow-up lane): `lead.status_changed` with a first
  response → the organization's follow-up sequences start for that lead;
- `imported_greetings` (batches, bulk lane): `lead.imported` from a CSV import
  the admin chose to greet → one first-touch task per lead on the bulk lane.

The first touch:

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
import uuid

from django.utils.dateparse import parse_datetime

from conversations import followups, replies, services
from conversations.models import Channel
from conversations.tasks import confirm_opt_out, first_touch, flush_replies, greet_imported, greeting_fallback
from leads import selectors
from swiftex.events import lead_ids_of
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


def handle_imported(events: list[dict]) -> None:
    """`lead.imported` with `greet`: each lead's first touch becomes a task on the bulk lane.
    A redelivered batch enqueues them again; the greeting's claim sends each one once. Each
    lead gets an id of its own, derived from the event's, for the first touch's ledger: one
    event names up to a chunk of leads, and each must get its own timeline entries."""
    for event in events:
        if event["data"].get("greet") is True:
            for lead_id in sorted(lead_ids_of([event["data"]])):
                per_lead = str(uuid.uuid5(uuid.UUID(str(event["id"])), str(lead_id)))
                greet_imported.apply_async(kwargs={"event_id": per_lead, "lead_id": lead_id})


def handle_inbound(events: list[dict]) -> None:
    """`message.received`: debounce into bursts; each burst is flushed (answered) once."""
    flushes: dict[int, float] = {}
    for event in events:
        data = event["data"]
        if not isinstance(data.get("message_id"), int) or not isinstance(data.get("conversation_id"), int):
            raise MalformedEvent(event["id"], "message.received without integer message_id and conversation_id")
        if data.get("opt_out"):
            confirm_opt_out.apply_async(kwargs={"message_id": data["message_id"]})
            continue
        org = selectors.organization(event.get("organization_id"))
        if org is None:
            continue
        wait = replies.schedule(data["conversation_id"], data["message_id"], org)
        flushes[data["conversation_id"]] = max(wait, flushes.get(data["conversation_id"], 0.0))
    for conversation_id, wait in flushes.items():  # one flush per conversation per batch
        flush_replies.apply_async(kwargs={"conversation_id": conversation_id}, countdown=wait)


def handle_lead_changes(events: list[dict]) -> None:
    """`lead.status_changed` carrying the first response: start the follow-up sequences."""
    greeted = []
    for event in events:
        data = event["data"]
        started = parse_datetime(data.get("first_response_at") or "") if isinstance(data.get("first_response_at"), str) else None
        if isinstance(data.get("lead_id"), int) and started is not None and isinstance(event.get("organization_id"), int):
            greeted.append((data["lead_id"], event["organization_id"], started))
    if greeted:
        followups.start_sequences(greeted)
