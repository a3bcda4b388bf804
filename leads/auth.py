"""`Authorization: Bearer <api key>` for the lead API.

Keys are looked up by their SHA-256. A small in-process cache (a few seconds,
`API_KEY_CACHE_SECONDS`) saves a query per request on the hot path; a revoked
key stops working within that time.
"""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from leads.models import ApiKey, Organization
from swiftex.ttlcache import TTLCache


class OrganizationPrincipal:
    """Stands in for `request.user` on API requests: the caller is an organization,
    through one of its keys (`pinned_source` is that key's source, or "")."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, org: Organization, pinned_source: str = "") -> None:
        self.organization = org
        self.pinned_source = pinned_source


# Unknown keys are cached too: a client retrying with a bad key costs no queries.
_cache: TTLCache[ApiKey | None] = TTLCache(lambda: settings.API_KEY_CACHE_SECONDS, keep_none=True)


def key_for(raw_key: str) -> ApiKey | None:
    """The live key (with its organization) for this raw value, or None."""
    key_hash = ApiKey.hash(raw_key)
    return _cache.get(key_hash, lambda: _load_key(key_hash))


def _load_key(key_hash: str) -> ApiKey | None:
    return (
        ApiKey.objects.select_related("organization")
        .filter(key_hash=key_hash)
        .exclude(revoked_at__lte=timezone.now())
        .first()
    )


def clear_cache() -> None:
    _cache.clear()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, raw_key = header.partition(" ")
        if scheme.lower() != "bearer" or not raw_key.strip():
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <api key>'.")
        api_key = key_for(raw_key.strip())
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return OrganizationPrincipal(api_key.organization, api_key.source), api_key.organization

    def authenticate_header(self, request):
        return 'Bearer realm="swiftex"'


class HasOrganization(permissions.BasePermission):
    message = "Authentication required: send 'Authorization: Bearer <api key>'."

    def has_permission(self, request, view):
        return isinstance(request.auth, Organization)
