"""Consuming subscriber queues inside a lane's Celery worker.

A worker started with `--subscribers conversations` also consumes the
`conversations.events` queue. Each event goes to the subscriber's handler,
which must be quick: it turns the event into a task on the right lane (or
records it) and returns. The message is acked only after the handler
returned, so a worker killed in between gets the event redelivered; handlers
are idempotent through `handle_once`.
"""

from __future__ import annotations

import logging
import time

from celery import bootsteps
from kombu import Consumer, Message

logger = logging.getLogger(__name__)

PREFETCH = 64
REQUEUE_PAUSE_SECONDS = 1.0


class MalformedEvent(ValueError):
    """The message can never be handled: it is dead-lettered, not retried."""


def validate_event(body: object) -> dict:
    if not isinstance(body, dict):
        raise MalformedEvent(f"event body must be a JSON object, got {type(body).__name__}")
    missing = [key for key in ("id", "type", "data") if key not in body]
    if missing:
        raise MalformedEvent(f"event is missing {', '.join(missing)}")
    if not isinstance(body["data"], dict):
        raise MalformedEvent("event data must be a JSON object")
    return body


def dispatch(subscriber, body: object, message: Message) -> None:
    """Hand one message to a subscriber and settle it with the broker."""
    try:
        subscriber.handler(validate_event(body))
    except MalformedEvent as exc:
        logger.error("dead-lettering message %s for %s: %s", message.properties.get("message_id"), subscriber.name, exc)
        message.reject(requeue=False)
    except Exception:
        # Transient (database or broker hiccup): put it back after a short pause
        # so a persistent fault does not spin the worker.
        logger.exception("event %s for %s failed; requeueing", message.properties.get("message_id"), subscriber.name)
        time.sleep(REQUEUE_PAUSE_SECONDS)
        message.requeue()
    else:
        message.ack()


class EventConsumerStep(bootsteps.ConsumerStep):
    def __init__(self, parent, subscribers: str = "", **kwargs) -> None:
        self.subscriber_names = [name.strip() for name in (subscribers or "").split(",") if name.strip()]
        super().__init__(parent, **kwargs)

    def get_consumers(self, channel):
        from swiftex.events.topology import declare_all, get_subscriber

        if not self.subscriber_names:
            return []
        declare_all(channel)
        consumers = []
        for name in self.subscriber_names:
            subscriber = get_subscriber(name)
            consumers.append(
                Consumer(
                    channel,
                    queues=[subscriber.queue],
                    callbacks=[lambda body, message, s=subscriber: dispatch(s, body, message)],
                    accept=["json"],
                    prefetch_count=PREFETCH,
                )
            )
        logger.info("consuming event queues for: %s", ", ".join(self.subscriber_names))
        return consumers
