"""Admin pages in the viewer's time zone: a rep's own, else their organization's.

Working hours and out-of-office are read in the rep's time zone, so an org admin typing
"out of office until 09:00" means 09:00 where they are, not in UTC. A superuser without a
Rep keeps the server's (UTC).
"""

from __future__ import annotations

from django.utils import timezone


class AdminTimezoneMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        zone = _zone_of(request.user) if request.path.startswith("/admin/") and request.user.is_authenticated else None
        if not zone:
            return self.get_response(request)
        with timezone.override(zone):
            return self.get_response(request)


def _zone_of(user) -> str | None:
    from routing.models import Rep

    row = Rep.objects.filter(user_id=user.pk).values_list("timezone", "organization__timezone").first()
    return (row[0] or row[1]) if row else None
