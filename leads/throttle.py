"""Per-organization ingest rate limit (token bucket; see swiftex/ratelimit.py)."""

from __future__ import annotations

from django.conf import settings

from leads.models import Organization
from swiftex import ratelimit

BURST_SECONDS = 10


def take_ingest_tokens(org: Organization, cost: int = 1) -> ratelimit.Decision:
    rate = org.ingest_rate_per_minute / 60
    # Ten seconds of traffic may arrive at once, and a full batch always fits.
    capacity = max(rate * BURST_SECONDS, settings.LEADS_BATCH_MAX_ITEMS)
    return ratelimit.take(f"ingest:{org.pk}", rate_per_second=rate, capacity=capacity, cost=cost)
