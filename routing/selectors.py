"""Reads for routing: the cached rules, and how many open leads reps hold."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Count

from leads.models import Lead
from routing.models import Assignment, RoutingRule
from routing.rules import Rule
from swiftex.ttlcache import TTLCache

_rules: TTLCache[list[Rule]] = TTLCache(lambda: settings.ORGANIZATION_CACHE_SECONDS)


def rules(org_id: int) -> list[Rule]:
    """The organization's active rules in order, cached like the organization (admin edits apply within that)."""
    return _rules.get(
        org_id, lambda: [Rule.from_model(rule) for rule in RoutingRule.objects.filter(organization_id=org_id, active=True)],
    )


def forget_rules(org_id: int) -> None:
    """Drop this process's cached rules of the organization: the next lead reads them afresh."""
    _rules.forget(org_id)


def open_lead_counts(rep_ids: list[int]) -> dict[int, int]:
    if not rep_ids:
        return {}
    rows = (
        Assignment.objects.filter(rep_id__in=rep_ids, lead__status__in=Lead.OPEN_STATUSES)
        .values("rep_id").annotate(n=Count("lead_id")).values_list("rep_id", "n")
    )
    return dict(rows)
