"""Keep Python's cyclic garbage collector from stopping a busy process for a tenth of a second.

A full (generation 2) collection walks every tracked object in the process
while holding the GIL: every thread waits. A web worker or lane holds
~160,000-210,000 objects once Django, DRF, Celery and kombu are loaded, and
under load such a collection came every 15-30 s per process and took 75-117 ms
of CPU (80-690 ms of wall time on the shared cores), freezing every ingest
or greeting in flight in that process (bench/README.md, sixth look).

Nearly all of those objects live as long as the process (modules, classes,
settings, URL patterns). `freeze_startup_objects()`, called once a process has
loaded everything and before it takes work, moves them to the collector's
permanent generation (`gc.freeze`), so later collections only walk what the
process allocated since. Cyclic garbage made after that is still collected.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_startup_objects(process: str) -> int:
    """Collect once, then exempt every object alive now from future collections.

    Returns how many objects were frozen. Call it when start-up is over: an
    object frozen and later dropped in a reference cycle is never freed."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("%s: %d start-up objects exempt from garbage collection", process, frozen)
    return frozen


def load_url_patterns() -> None:
    """Import every view now (Django does it on the first request), so they are frozen too."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - the property imports the URLconf and its views
