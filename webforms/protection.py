"""Spam and flood protection for the public form: the honeypot and the rate limit per client IP."""

from __future__ import annotations

from django.conf import settings

from swiftex import ratelimit
from swiftex.client_address import bucket_of, client_ip

# A text field people never see (off-screen, aria-hidden, out of the tab order); form-filling
# bots fill every field, and "website" is a field they like.
HONEYPOT_FIELD = "company_website"


def is_bot(post) -> bool:
    return bool(post.get(HONEYPOT_FIELD, "").strip())


def take_ip_token(request) -> ratelimit.Decision:
    """One submission from this client, across every form (a bot spraying many forms is one client)."""
    rate = settings.WEBFORM_IP_RATE_PER_MINUTE / 60
    return ratelimit.take(f"webform-ip:{bucket_of(client_ip(request))}", rate_per_second=rate, capacity=settings.WEBFORM_IP_BURST)
