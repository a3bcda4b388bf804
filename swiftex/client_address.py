"""Who is asking: the client's address behind trusted proxies, and the address a limit counts."""

from __future__ import annotations

import ipaddress

from django.conf import settings


def client_ip(request) -> str:
    """The client's address: REMOTE_ADDR, or, behind WEBFORM_TRUSTED_PROXIES proxies, the address
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
