"""The Celery application.

Settings come from Django settings under the `CELERY_` namespace. Task queues
and lanes are declared in `settings.SWIFTEX_LANES`; this module turns them into
kombu queues and installs the event-consumer step that lets a lane's worker
also consume its subscribers' event queues (see `swiftex/events/consumer.py`),
and counts task failures and retries per task for /metrics (swiftex/metrics.py).
"""

from __future__ import annotations

import os

import click
from celery import Celery, bootsteps, signals

from swiftex import metrics
from swiftex.heap import freeze_startup_objects

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


class PromptShutdown(bootsteps.StartStopStep):
    """Wake the worker's event loop every second.

    A warm shutdown (SIGTERM, Ctrl-C) only sets a flag that the loop checks
    when `poll()` returns, which on an idle worker can be many seconds away.
    A one-second tick makes deploys and Ctrl-C stop a lane within a second.
    """

    requires = ("celery.worker.components:Hub",)

    def start(self, worker) -> None:
        if worker.hub is not None:
            worker.hub.call_repeatedly(1.0, _noop)


def _noop() -> None:
    pass


@signals.worker_ready.connect
def _freeze_startup_objects(**_) -> None:
    # Every lane runs its pool as threads in this one process (swiftex/heap.py).
    freeze_startup_objects("lane worker")


@signals.task_failure.connect
def _count_failure(sender=None, **_) -> None:
    metrics.TASK_FAILURES.labels(task=sender.name).inc()


@signals.task_retry.connect
def _count_retry(sender=None, **_) -> None:
    metrics.TASK_RETRIES.labels(task=sender.name).inc()


def _install_steps() -> None:
    from swiftex.events.consumer import EventConsumerStep

    app.steps["consumer"].add(EventConsumerStep)
    app.steps["worker"].add(PromptShutdown)


_install_steps()
