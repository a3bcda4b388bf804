"""Business hours: when an organization's follow-ups may go out, in its own time zone.

Only scheduled messages wait for business hours. The first greeting to a lead
who just submitted a form, and replies to a lead who just wrote, go at once.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta

from leads.models import Organization


def next_allowed(org: Organization, at: datetime) -> datetime:
    """`at` itself if it falls in business hours, else the start of the next business period."""
    if not org.quiet_hours_enabled:
        return at
    tz = zoneinfo.ZoneInfo(org.timezone)
    local = at.astimezone(tz)
    days = org.business_weekdays()
    start, end = org.business_hours_start, org.business_hours_end
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        if day.isoweekday() not in days:
            continue
        opens = datetime.combine(day, start, tzinfo=tz)
        closes = datetime.combine(day, end, tzinfo=tz)
        if offset == 0 and opens <= local < closes:
            return at
        if local < opens:
            # Through UTC and back: a DST jump on that morning lands on a real instant.
            return opens.astimezone(zoneinfo.ZoneInfo("UTC")).astimezone(at.tzinfo)
    return at  # no business day configured at all (validation forbids it): never hold a message forever


def describe(org: Organization) -> str:
    days = ",".join(str(day) for day in sorted(org.business_weekdays()))
    return f"{org.business_hours_start:%H:%M}-{org.business_hours_end:%H:%M} {org.timezone}, weekdays {days}"
