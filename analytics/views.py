"""The speed-to-lead dashboard for sales ops (managers) and its CSV export.

Server-rendered, charts included (analytics/charts.py); every number is the
manager's own organization's. A plain rep gets 403: the figures name every
colleague.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from analytics import charts, selectors
from reps.views import chrome, rep_required
from swiftex.csvexport import streamed_csv


def _manager(request: HttpRequest):
    if not request.rep.is_manager:
        raise PermissionDenied("The speed-to-lead dashboard is for managers.")
    return request.rep.organization


@require_GET
@rep_required
def dashboard(request: HttpRequest) -> HttpResponse:
    org = _manager(request)
    error, status = "", 200
    try:
        rng = selectors.date_range(org, request.GET.get("from"), request.GET.get("to"))
    except selectors.BadRange as exc:
        error, status = str(exc), 400
        rng = selectors.date_range(org, None, None)
    totals = selectors.summary(org, rng)
    bands = selectors.histogram(org, rng)
    points = selectors.trend(org, rng)
    when = "%H:%M" if rng.bucket == "hour" else "%b %d"
    labels = [point["at"].strftime(when) for point in points]
    return render(request, "analytics/dashboard.html", {
        "org": org, "range": rng, "error": error, "totals": totals, "funnel": selectors.funnel(totals),
        "bands": bands, "points": points,
        "histogram_chart": charts.bars([b["label"] for b in bands], [b["count"] for b in bands], title="First response times (leads)"),
        "percentile_chart": charts.lines(labels, {
            name: [None if point[key] is None else point[key] / 1000 for point in points]
            for name, key in (("p50", "p50"), ("p95", "p95"), ("p99", "p99"))
        }, title=f"First response percentiles per {rng.bucket}", unit=" s"),
        "volume_chart": charts.bars(labels, [point["per_minute"] for point in points], title=f"Leads per minute, averaged per {rng.bucket}"),
        "breakdowns": [(title, selectors.breakdown(org, rng, key)) for key, title in (
            ("source", "Source"), ("campaign", "Campaign"), ("channel", "Channel"), ("rep", "Rep"))],
        "breaches": selectors.breaches(org, rng),
        **chrome(request),
    }, status=status)


EXPORT_COLUMNS = (
    "lead_id", "captured_at", "source", "campaign", "status", "channel", "first_response_ms",
    "delivered_at", "read_at", "replied_at", "qualified_at", "rep", "rep_acted_at",
)


@require_GET
@rep_required
def export_csv(request: HttpRequest) -> HttpResponse:
    org = _manager(request)
    try:
        rng = selectors.date_range(org, request.GET.get("from"), request.GET.get("to"))
    except selectors.BadRange as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
    rows = ([_cell(fact, column) for column in EXPORT_COLUMNS] for fact in selectors.export(org, rng))
    return streamed_csv(f"speed-to-lead-{rng.first_day}-{rng.last_day}.csv", list(EXPORT_COLUMNS), rows)


def _cell(fact, column: str) -> object:
    if column == "rep":
        return str(fact.rep) if fact.rep_id else ""
    value = getattr(fact, column)
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
