"""Spam and flood protection for the public form: the honeypot, the client's IP, its rate limit."""

from __future__ import annotations

import ipaddress

from django.conf import settings

from swiftex import ratelimit

# A text field people never see (off-screen, aria-hidden, out of the tab order); form-filling
# bots fill every field, and "website" is a field they like.
HONEYPOT_FIELD = "company_website"


def is_bot(post) -> bool:
    return bool(post.get(HONEYPOT_FIELD, "").strip())


def client_ip(request) -> str:
    """The visitor's address: REMOTE_ADDR, or, behind WEBFORM_TRUSTED_PROXIES proxies, the address
    the outermost of them saw (X-Forwarded-For's entries left of it were written by the client)."""
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = settings.WEBFORM_TRUSTED_PROXIES
    if not proxies:
        return remote
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    if not hops:
        return remote
    candidate = hops[-proxies] if len(hops) >= proxies else hops[0]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote


def bucket_of(ip: str) -> str:
    """One bucket per IPv4 address, one per IPv6 /64 (a single subscriber usually holds a whole /64)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "unknown"
    if address.version == 6:
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False).network_address)
    return str(address)


def take_ip_token(request) -> ratelimit.Decision:
    """One submission from this client, across every form (a bot spraying many forms is one client)."""
    rate = settings.WEBFORM_IP_RATE_PER_MINUTE / 60
    return ratelimit.take(f"webform-ip:{bucket_of(client_ip(request))}", rate_per_second=rate, capacity=settings.WEBFORM_IP_BURST)
