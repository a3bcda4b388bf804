"""Exchange, subscriber queues and dead-lettering, derived from settings.

Every subscriber has its own durable queue `<name>.events` bound to the topic
exchange by the routing keys it asked for, so a slow or stopped subscriber only
ever backs up its own queue. Messages a handler cannot make sense of are
rejected to `swiftex.dead`, where an engineer can inspect them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Callable

from django.conf import settings
from django.utils.module_loading import import_string
from kombu import Exchange, Queue, binding

DEAD_LETTER_EXCHANGE = Exchange("swiftex.dead", type="fanout", durable=True)
DEAD_LETTER_QUEUE = Queue("swiftex.dead", exchange=DEAD_LETTER_EXCHANGE, durable=True)


@dataclass(frozen=True)
class Subscriber:
    name: str
    routing_keys: tuple[str, ...]
    handler_path: str
    flush_seconds: float = 0.05  # how long a batch may wait for more events
    in_pool: bool = False  # one event at a time in the lane's worker pool instead of batches

    @property
    def queue(self) -> Queue:
        return subscriber_queue(self.name)

    @property
    def handler(self) -> Callable:
        return import_string(self.handler_path)


def events_exchange() -> Exchange:
    return Exchange(settings.SWIFTEX_EVENTS_EXCHANGE, type="topic", durable=True)


@cache
def subscribers() -> dict[str, Subscriber]:
    return {
        name: Subscriber(
            name=name, routing_keys=tuple(spec["routing_keys"]), handler_path=spec["handler"],
            flush_seconds=spec.get("flush_seconds", Subscriber.flush_seconds), in_pool=spec.get("in_pool", False),
        )
        for name, spec in settings.SWIFTEX_SUBSCRIBERS.items()
    }


def get_subscriber(name: str) -> Subscriber:
    try:
        return subscribers()[name]
    except KeyError:
        raise ValueError(f"unknown event subscriber {name!r}; known: {', '.join(sorted(subscribers()))}") from None


def subscriber_queue(name: str) -> Queue:
    exchange = events_exchange()
    spec = settings.SWIFTEX_SUBSCRIBERS[name]
    return Queue(
        f"{name}.events",
        bindings=[binding(exchange, routing_key=key) for key in spec["routing_keys"]],
        durable=True,
        queue_arguments={"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name},
    )


def declare_all(channel) -> None:
    """Declare exchange, every subscriber queue with its bindings, and the dead-letter queue.

    Publishers call this before their first publish so that no event is ever
    routed to nowhere because a subscriber's worker has not started yet.
    """
    events_exchange()(channel).declare()
    DEAD_LETTER_QUEUE(channel).declare()
    for name in settings.SWIFTEX_SUBSCRIBERS:
        subscriber_queue(name)(channel).declare()
