"""The Celery application.

Settings come from Django settings under the `CELERY_` namespace. Task queues
and lanes are declared in `settings.SWIFTEX_LANES`; this module turns them into
kombu queues and installs the event-consumer step that lets a lane's worker
also consume its subscribers' event queues (see `swiftex/events/consumer.py`).
"""

from __future__ import annotations

import os

import click
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "swiftex.settings")

app = Celery("swiftex")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.user_options["worker"].add(
    click.Option(
        ("--subscribers",),
        default="",
        help="Comma-separated event subscribers whose queues this worker consumes (see SWIFTEX_SUBSCRIBERS).",
    )
)


def _install_event_consumer() -> None:
    from swiftex.events.consumer import EventConsumerStep

    app.steps["consumer"].add(EventConsumerStep)


_install_event_consumer()
