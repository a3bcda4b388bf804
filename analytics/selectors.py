"""Reads for the speed-to-lead dashboard: one organization, one date range.

Percentiles are exact: PostgreSQL's `percentile_cont` over the stored facts
(linear interpolation between the two nearest values, as numpy's default),
computed among the leads that were answered; leads never answered are
counted apart (unanswered, SLA breaches), since no time describes them.
Counts over the whole range (headline, funnel, leads per minute) come from the
hourly roll-ups, so they cost the same for a quiet week as for a busy quarter.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from django.utils import timezone

from analytics.models import HourlyStat, LeadFact
from conversations.models import Greeting
from leads.models import Contact, Lead, Organization
from routing.models import Rep
from swiftex.db import fetch_rows

MAX_RANGE_DAYS = 92
DEFAULT_RANGE_DAYS = 7
HOURLY_BUCKETS_UP_TO_DAYS = 2  # longer ranges are drawn per day
PERCENTILES = (0.5, 0.95, 0.99)
# First-response histogram: upper bounds in ms (the last bar is everything slower).
HISTOGRAM_BOUNDS_MS = (500, 1000, 1500, 2000, 3000, 5000, 10_000, 30_000, 60_000, 300_000)
BREAKDOWNS = {"source": "source", "campaign": "campaign", "channel": "channel", "rep": "rep_id"}

_FACT = LeadFact._meta.db_table
_STAT = HourlyStat._meta.db_table


class BadRange(ValueError):
    """A date range the dashboard cannot show, in words for the user."""


@dataclass(frozen=True)
class Range:
    first_day: dt.date  # inclusive, in the organization's time zone
    last_day: dt.date  # inclusive
    tz: ZoneInfo

    @property
    def start(self) -> dt.datetime:
        return dt.datetime.combine(self.first_day, dt.time(), self.tz)

    @property
    def end(self) -> dt.datetime:
        return dt.datetime.combine(self.last_day + dt.timedelta(days=1), dt.time(), self.tz)

    @property
    def bucket(self) -> str:
        return "hour" if (self.last_day - self.first_day).days < HOURLY_BUCKETS_UP_TO_DAYS else "day"

    @property
    def params(self) -> dict:
        return {"from": self.first_day.isoformat(), "to": self.last_day.isoformat()}


FIRST_DAY, LAST_DAY = dt.date(1970, 1, 1), dt.date(9998, 12, 31)


def date_range(org: Organization, first: str | None, last: str | None, *, today: dt.date | None = None) -> Range:
    """The range asked for in the URL (YYYY-MM-DD, both inclusive); the last 7 days by default."""
    tz = ZoneInfo(org.timezone)
    today = today or timezone.now().astimezone(tz).date()
    last_day = _day(last, "to") or today
    first_day = _day(first, "from") or last_day - dt.timedelta(days=DEFAULT_RANGE_DAYS - 1)
    if first_day > last_day:
        raise BadRange(f"The range starts ({first_day}) after it ends ({last_day}).")
    if (last_day - first_day).days >= MAX_RANGE_DAYS:
        raise BadRange(f"Pick at most {MAX_RANGE_DAYS} days; this range has {(last_day - first_day).days + 1}.")
    return Range(first_day, last_day, tz)


def _day(value: str | None, name: str) -> dt.date | None:
    if not value:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise BadRange(f"“{value[:20]}” is not a date for “{name}”; use YYYY-MM-DD.") from None
    if not FIRST_DAY <= day <= LAST_DAY:  # the range's edges are computed in datetimes a day and a zone away
        raise BadRange(f"“{value[:20]}” for “{name}” is outside {FIRST_DAY.year}–{LAST_DAY.year}.")
    return day



def _range_params(org: Organization, rng: Range, **extra) -> dict:
    return {"org": org.pk, "start": rng.start, "end": rng.end, "tz": str(rng.tz), **extra}


_PERCENTILE_SQL = f"percentile_cont(ARRAY{list(PERCENTILES)}::float8[]) WITHIN GROUP (ORDER BY first_response_ms)"
_IN_RANGE = "organization_id = %(org)s AND captured_at >= %(start)s AND captured_at < %(end)s"
_HOURS_IN_RANGE = "organization_id = %(org)s AND hour >= %(start)s AND hour < %(end)s"


def summary(org: Organization, rng: Range, *, now: dt.datetime | None = None) -> dict:
    """The headline: counts, the share answered within 5 s / 60 s / 5 min, exact percentiles, SLA breaches."""
    counted = ("leads", "greeted", "delivered", "read", "replied", "qualified", "within_5s", "within_60s", "within_5m")
    (totals,) = fetch_rows(
        f"SELECT {', '.join(f'COALESCE(sum({name}), 0)' for name in counted)} FROM {_STAT} WHERE {_HOURS_IN_RANGE}",
        _range_params(org, rng),
    )
    result = dict(zip(counted, totals))
    (row,) = fetch_rows(
        f"SELECT {_PERCENTILE_SQL}, {_BREACH_COUNT} FROM {_FACT} WHERE {_IN_RANGE}",
        _range_params(org, rng, **_breach_params(org, now)),
    )
    result["p50"], result["p95"], result["p99"] = row[0] or (None, None, None)
    result["breaches"] = row[1]
    result["unanswered"] = result["leads"] - result["greeted"]
    for name in ("within_5s", "within_60s", "within_5m"):
        result[f"{name}_share"] = _share(result[name], result["leads"])
    return result


def funnel(totals: dict) -> list[dict]:
    """Captured → greeted → delivered → replied → qualified, each as a count and a share of captured."""
    steps = (("Captured", "leads"), ("Greeted", "greeted"), ("Delivered", "delivered"), ("Replied", "replied"), ("Qualified", "qualified"))
    return [{"label": label, "count": totals[key], "share": _share(totals[key], totals["leads"])} for label, key in steps]


def histogram(org: Organization, rng: Range) -> list[dict]:
    """How many answered leads fell in each first-response band."""
    counts = dict(fetch_rows(
        f"SELECT width_bucket(first_response_ms, %(bounds)s::int[]), count(*) FROM {_FACT} "
        f"WHERE {_IN_RANGE} AND first_response_ms IS NOT NULL GROUP BY 1",
        _range_params(org, rng, bounds=list(HISTOGRAM_BOUNDS_MS)),
    ))
    labels = [f"< {_band(HISTOGRAM_BOUNDS_MS[0])}"]
    labels += [_band(low, high) for low, high in zip(HISTOGRAM_BOUNDS_MS, HISTOGRAM_BOUNDS_MS[1:])]
    labels.append(f"≥ {_band(HISTOGRAM_BOUNDS_MS[-1])}")
    return [{"label": label, "count": counts.get(index, 0)} for index, label in enumerate(labels)]


def trend(org: Organization, rng: Range) -> list[dict]:
    """Per hour (ranges up to 2 days) or per local day: leads per minute and first-response percentiles."""
    bucket = rng.bucket
    params = _range_params(org, rng, bucket=bucket)
    counts = dict(fetch_rows(
        f"SELECT date_trunc(%(bucket)s, hour AT TIME ZONE %(tz)s), sum(leads) FROM {_STAT} "
        f"WHERE {_HOURS_IN_RANGE} GROUP BY 1",
        params,
    ))
    percentiles = {
        at: values for at, values in fetch_rows(
            f"SELECT date_trunc(%(bucket)s, captured_at AT TIME ZONE %(tz)s), {_PERCENTILE_SQL} FROM {_FACT} "
            f"WHERE {_IN_RANGE} AND first_response_ms IS NOT NULL GROUP BY 1",
            params,
        )
    }
    step = dt.timedelta(hours=1) if bucket == "hour" else dt.timedelta(days=1)
    points, at = [], dt.datetime.combine(rng.first_day, dt.time())
    while at < dt.datetime.combine(rng.last_day + dt.timedelta(days=1), dt.time()):
        # The bucket's real length: on a clock change a local day has 23 or 25 hours, the hour the
        # clocks go back is two hours long, and the hour they skip does not exist (no point).
        minutes = (_utc(at + step, rng.tz) - _utc(at, rng.tz)).total_seconds() / 60
        if minutes > 0:
            p50, p95, p99 = percentiles.get(at) or (None, None, None)
            leads = counts.get(at, 0)
            points.append({"at": at, "leads": leads, "per_minute": leads / minutes, "p50": p50, "p95": p95, "p99": p99})
        at += step
    return points


def _utc(local: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """A local wall-clock time as an instant (the earlier one when the clocks go back)."""
    return local.replace(tzinfo=tz).astimezone(dt.timezone.utc)


def breakdown(org: Organization, rng: Range, dimension: str, *, now: dt.datetime | None = None, limit: int = 20) -> list[dict]:
    """First-response distribution per source, campaign, channel or rep: the busiest `limit` first."""
    column = BREAKDOWNS[dimension]
    rows = fetch_rows(
        f"SELECT {column}, count(*), count(first_response_ms), {_PERCENTILE_SQL}, "
        f"count(*) FILTER (WHERE first_response_ms <= 5000), count(*) FILTER (WHERE first_response_ms <= 60000), "
        f"count(*) FILTER (WHERE first_response_ms <= 300000), "
        f"{_BREACH_COUNT} FROM {_FACT} WHERE {_IN_RANGE} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %(limit)s",
        _range_params(org, rng, limit=limit, **_breach_params(org, now)),
    )
    names = _rep_names([row[0] for row in rows]) if dimension == "rep" else {}
    result = []
    for key, leads, answered, percentiles, within_5s, within_60s, within_5m, breaches in rows:
        p50, p95, p99 = percentiles or (None, None, None)
        label = names.get(key, "Unassigned") if dimension == "rep" else (key or "(none)")
        result.append({
            "label": label, "leads": leads, "answered": answered, "p50": p50, "p95": p95, "p99": p99,
            "within_5s_share": _share(within_5s, leads), "within_60s_share": _share(within_60s, leads),
            "within_5m_share": _share(within_5m, leads), "breaches": breaches,
        })
    return result


def breaches(org: Organization, rng: Range, *, now: dt.datetime | None = None, limit: int = 25) -> list[dict]:
    """The latest leads not answered within the organization's target, with the greeting's reason when it has one."""
    rows = fetch_rows(
        f"SELECT f.lead_id, f.captured_at, f.source, f.campaign, f.first_response_ms, contact.name, greeting.state, greeting.reason "
        f"FROM (SELECT * FROM {_FACT} WHERE {_IN_RANGE} AND {_BREACHED} ORDER BY captured_at DESC, lead_id DESC LIMIT %(limit)s) AS f "
        f"JOIN {Lead._meta.db_table} AS lead ON lead.id = f.lead_id "
        f"JOIN {Contact._meta.db_table} AS contact ON contact.id = lead.contact_id "
        f"LEFT JOIN {Greeting._meta.db_table} AS greeting ON greeting.lead_id = f.lead_id "
        f"ORDER BY f.captured_at DESC, f.lead_id DESC",
        _range_params(org, rng, limit=limit, **_breach_params(org, now)),
    )
    keys = ("lead_id", "captured_at", "source", "campaign", "first_response_ms", "name", "greeting_state", "reason")
    return [dict(zip(keys, row)) for row in rows]


def export(org: Organization, rng: Range):
    """Every fact in the range, oldest first, streamed in chunks (the CSV export)."""
    return (
        LeadFact.objects.filter(organization=org, captured_at__gte=rng.start, captured_at__lt=rng.end)
        .select_related("rep__user").order_by("captured_at", "lead_id").iterator(chunk_size=2000)
    )


# A lead breaches once its target passed without an answer, or when its answer came late.
_BREACHED = (
    "(first_response_ms > %(target_ms)s OR (first_response_ms IS NULL AND captured_at < %(breach_before)s))"
)
_BREACH_COUNT = f"count(*) FILTER (WHERE {_BREACHED})"


def _breach_params(org: Organization, now: dt.datetime | None) -> dict:
    target = org.first_response_target_seconds
    return {"target_ms": target * 1000, "breach_before": (now or timezone.now()) - dt.timedelta(seconds=target)}


def _rep_names(rep_ids: list[int | None]) -> dict[int, str]:
    return {rep.pk: str(rep) for rep in Rep.objects.filter(pk__in=[pk for pk in rep_ids if pk]).select_related("user")}


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _band(*bounds_ms: int) -> str:
    """"0.5–1 s", "1–5 min": short enough to sit under a bar."""
    if max(bounds_ms) <= 60_000:
        return "–".join(f"{ms / 1000:g}" for ms in bounds_ms) + " s"
    return "–".join(f"{ms / 60_000:g}" for ms in bounds_ms) + " min"
