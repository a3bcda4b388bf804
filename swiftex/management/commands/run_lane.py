"""`manage.py run_lane NAME`: start the Celery worker for one lane from SWIFTEX_LANES."""

from __future__ import annotations

import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from swiftex.celery import app


def lane_worker_argv(lane: str, *, loglevel: str = "INFO") -> list[str]:
    try:
        spec = settings.SWIFTEX_LANES[lane]
    except KeyError:
        raise CommandError(f"unknown lane {lane!r}; lanes: {', '.join(settings.SWIFTEX_LANES)}") from None
    argv = [
        "worker",
        "--queues", spec["queue"],
        "--pool", spec["pool"],
        "--concurrency", str(spec["concurrency"]),
        "--hostname", f"{lane}-{os.getpid()}@%h",
        "--loglevel", loglevel,
        # No cluster chatter: lanes share nothing but the broker.
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    if spec["subscribers"]:
        argv += ["--subscribers", ",".join(spec["subscribers"])]
    return argv


class Command(BaseCommand):
    help = "Run the Celery worker for one lane (first_touch, conversations, followups, bulk)."

    def add_arguments(self, parser):
        parser.add_argument("lane", choices=sorted(settings.SWIFTEX_LANES))
        parser.add_argument("--loglevel", default=settings.LOG_LEVEL)

    def handle(self, *args, lane: str, loglevel: str, **options):
        if settings.SWIFTEX_LANES[lane].get("nice"):
            # Background lanes yield the CPU to the web and the first touch when both want it.
            os.nice(settings.SWIFTEX_LANES[lane]["nice"])
        app.worker_main(lane_worker_argv(lane, loglevel=loglevel))
