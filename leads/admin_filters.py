"""The leads list's filters, each cheap at hundreds of thousands of leads.

Measured on 100,000 leads (EXPLAIN ANALYZE, docs/admin.md):
- Owner and greeting filter with EXISTS, not through the LEFT JOINs the page
  selects: the planner then walks the newest leads and stops at the page's
  100 instead of joining every lead first ("unassigned": 66 ms → 1 ms for the
  page; the count of matching leads still reads them all, 24 ms).
- Source and campaign offer the distinct values found by a skip scan of the
  (organization, value) index, one index probe per value (13-15 ms → 0.5 ms),
  instead of Django's SELECT DISTINCT over every lead.
- A search that is a whole phone number or e-mail address is an exact lookup
  on the contact's unique index; anything else is Django's substring search.
"""

from __future__ import annotations

import phonenumbers
from django.contrib import admin
from django.db import connection
from django.db.models import Exists, OuterRef

from conversations.models import Greeting
from leads.models import Lead
from routing.models import Assignment, Rep
from swiftex.admin_tenancy import scope_of

MAX_VALUES = 200  # a filter list longer than this is not read; search instead
MAX_PAIRS = 20_000  # (organization, value) pairs a superuser's skip scan visits at most


def _organization_id(request) -> int | None:
    """The one organization the list shows: the user's, or the one a superuser filtered on."""
    scope = scope_of(request)
    if not scope.everything:
        return scope.organization_id
    value = request.GET.get("organization__id__exact", "")
    return int(value) if value.isascii() and value.isdigit() else None


class OwnerFilter(admin.SimpleListFilter):
    title = "owner"
    parameter_name = "owner"

    def lookups(self, request, model_admin):
        reps = scope_of(request).filter(Rep.objects.select_related("user", "organization"), "organization")
        if org_id := _organization_id(request):
            reps = reps.filter(organization_id=org_id)
        several = len({rep.organization_id for rep in reps}) > 1
        return [("none", "Unassigned")] + [
            (str(rep.pk), f"{rep} ({rep.organization})" if several else str(rep))
            for rep in sorted(reps, key=lambda rep: str(rep).lower())
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "none":
            return queryset.filter(~Exists(Assignment.objects.filter(lead=OuterRef("pk"), rep__isnull=False)))
        if value and value.isascii() and value.isdigit():
            return queryset.filter(Exists(Assignment.objects.filter(lead=OuterRef("pk"), rep_id=int(value))))
        return queryset


class GreetingFilter(admin.SimpleListFilter):
    """Finds the leads the resend action is for: greeting failed, skipped or never started."""

    title = "greeting"
    parameter_name = "greeting"

    def lookups(self, request, model_admin):
        return [("failed", "Failed"), ("skipped", "Skipped"), ("none", "None yet"), ("sending", "Sending"), ("done", "Sent")]

    def queryset(self, request, queryset):
        if self.value() == "none":
            return queryset.filter(~Exists(Greeting.objects.filter(lead=OuterRef("pk"))))
        if self.value() in Greeting.State.values:
            return queryset.filter(Exists(Greeting.objects.filter(lead=OuterRef("pk"), state=self.value())))
        return queryset


class _DistinctValueFilter(admin.SimpleListFilter):
    column: str  # a text column of leads with an (organization, column) index

    def lookups(self, request, model_admin):
        return [(value, value or "(empty)") for value in self._values(_organization_id(request))]

    def queryset(self, request, queryset):
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.column: value})

    def _values(self, org_id: int | None) -> list[str]:
        table = Lead._meta.db_table
        with connection.cursor() as cursor:
            if org_id is None:
                # A superuser across every organization: the same skip scan over (organization, value)
                # pairs, capped, then the distinct values of those.
                cursor.execute(f"""
                    WITH RECURSIVE p AS (
                        (SELECT organization_id, {self.column} AS value, 1 AS n FROM {table}
                         ORDER BY organization_id, {self.column} LIMIT 1)
                        UNION ALL
                        SELECT next.organization_id, next.value, p.n + 1 FROM p, LATERAL (
                            SELECT l.organization_id, l.{self.column} FROM {table} l
                            WHERE (l.organization_id, l.{self.column}) > (p.organization_id, p.value)
                            ORDER BY l.organization_id, l.{self.column} LIMIT 1
                        ) AS next(organization_id, value)
                        WHERE p.n < %(pairs)s
                    )
                    SELECT DISTINCT value FROM p ORDER BY 1 LIMIT %(limit)s
                """, {"pairs": MAX_PAIRS, "limit": MAX_VALUES})
            else:
                # A loose index scan: each step jumps to the next value in the index.
                cursor.execute(f"""
                    WITH RECURSIVE v AS (
                        (SELECT {self.column} AS value FROM {table} WHERE organization_id = %(org)s ORDER BY {self.column} LIMIT 1)
                        UNION ALL
                        SELECT (SELECT {self.column} FROM {table}
                                WHERE organization_id = %(org)s AND {self.column} > v.value ORDER BY {self.column} LIMIT 1)
                        FROM v WHERE v.value IS NOT NULL
                    )
                    SELECT value FROM v WHERE value IS NOT NULL LIMIT %(limit)s
                """, {"org": org_id, "limit": MAX_VALUES})
            return [row[0] for row in cursor.fetchall()]


class SourceFilter(_DistinctValueFilter):
    title = "source"
    parameter_name = "source"
    column = "source"


class CampaignFilter(_DistinctValueFilter):
    title = "campaign"
    parameter_name = "campaign"
    column = "campaign"


def exact_contact_lookup(term: str, phone_region: str | None) -> dict | None:
    """A search that is a whole phone number or e-mail address, as an exact lookup the
    contacts' unique (organization, phone/email) indexes answer; None for anything else,
    which gets the ordinary (scanning) substring search."""
    term = term.strip()
    if "@" in term and " " not in term:
        return {"contact__email": term.lower()}
    if sum(ch.isdigit() for ch in term) >= 7 and set(term) <= set("+0123456789 -().") and (phone_region or term.startswith("+")):
        try:
            number = phonenumbers.parse(term, phone_region)
        except phonenumbers.NumberParseException:
            return None
        if phonenumbers.is_possible_number(number):  # stored numbers are E.164: a whole one matches exactly or not at all
            return {"contact__phone": phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)}
    return None
