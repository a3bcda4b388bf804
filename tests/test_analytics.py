"""Speed-to-lead analytics: facts and roll-ups from events, exact percentiles, the funnel, the dashboard and its export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from analytics import selectors, services
from analytics.models import HourlyStat, LeadFact
from analytics.subscriber import handle_events
from leads.models import Lead
from swiftex.models import ProcessedEvent
from tests.factories import make_lead_history, make_rep, org_with_key

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc
MONDAY = dt.datetime(2026, 11, 16, 9, 0, tzinfo=UTC)
_phones = iter(range(10_000_000))


def phone() -> str:
    return f"+1415{next(_phones):07d}"


def event(lead_id: int, kind: str = "lead.created") -> dict:
    return {"id": str(uuid.uuid4()), "type": kind, "data": {"lead_id": lead_id}}


def stats(org) -> dict:
    rows = HourlyStat.objects.filter(organization=org)
    return {name: sum(getattr(row, name) for row in rows) for name in ("leads", "greeted", "delivered", "read", "replied", "qualified", "within_5s")}


def week(org) -> selectors.Range:
    return selectors.date_range(org, "2026-11-16", "2026-11-22")


def login(rep) -> Client:
    client = Client()
    client.force_login(rep.user)
    return client


# --- the consumer ------------------------------------------------------------------


def test_events_become_facts_and_hourly_rollups():
    org, _ = org_with_key()
    ana = make_rep(org, "ana")
    lead = make_lead_history(org, phone(), at=MONDAY, response_ms=1234, delivered=True, replied=True, qualified=True, rep=ana,
                             source="google", campaign="black-friday")

    handle_events([event(lead.pk)])

    fact = LeadFact.objects.get(lead=lead)
    assert (fact.source, fact.campaign, fact.channel, fact.first_response_ms, fact.rep) == ("google", "black-friday", "whatsapp", 1234, ana)
    assert fact.delivered_at and fact.replied_at and fact.qualified_at and fact.read_at is None
    (row,) = HourlyStat.objects.filter(organization=org)
    assert (row.hour, row.source, row.campaign) == (MONDAY, "google", "black-friday")
    assert (row.leads, row.greeted, row.delivered, row.read, row.replied, row.qualified, row.within_5s) == (1, 1, 1, 0, 1, 1, 1)
    assert row.response_ms_sum == 1234


def test_the_same_event_twice_counts_once_and_later_events_move_the_counts():
    org, _ = org_with_key()
    lead = make_lead_history(org, phone(), at=MONDAY)
    created = event(lead.pk)

    handle_events([created])
    handle_events([created, created])  # a redelivery, and a duplicate inside a batch
    handle_events([event(lead.pk, "lead.status_changed")])  # a new event about an unchanged lead
    assert stats(org) == {"leads": 1, "greeted": 0, "delivered": 0, "read": 0, "replied": 0, "qualified": 0, "within_5s": 0}
    assert ProcessedEvent.objects.filter(consumer="analytics").count() == 2

    Lead.objects.filter(pk=lead.pk).update(first_response_at=MONDAY + dt.timedelta(seconds=7))
    handle_events([event(lead.pk, "lead.status_changed")])
    assert stats(org) == {"leads": 1, "greeted": 1, "delivered": 0, "read": 0, "replied": 0, "qualified": 0, "within_5s": 0}
    assert HourlyStat.objects.get(organization=org).within_60s == 1


def test_a_batch_costs_the_same_few_statements_for_one_lead_or_a_hundred():
    org, _ = org_with_key()
    leads = [make_lead_history(org, phone(), at=MONDAY + dt.timedelta(minutes=i), response_ms=900 + i) for i in range(100)]

    with CaptureQueriesContext(connection) as one:
        handle_events([event(leads[0].pk)])
    with CaptureQueriesContext(connection) as hundred:
        handle_events([event(lead.pk) for lead in leads[1:]] + [{"id": str(uuid.uuid4()), "type": "message.statuses",
                                                                 "data": {"lead_ids": [lead.pk for lead in leads]}}])

    statements = [q for q in hundred.captured_queries if not (q["sql"] or "").startswith(("SAVEPOINT", "RELEASE"))]
    assert len(hundred.captured_queries) == len(one.captured_queries)
    assert len(statements) <= 3  # ledger, per-organization lock, refresh
    assert stats(org)["leads"] == 100 and stats(org)["greeted"] == 100


def test_events_without_a_lead_are_recorded_and_ignored():
    handle_events([
        {"id": str(uuid.uuid4()), "type": "message.received", "data": {"lead_id": None, "contact_id": 3}},
        {"id": str(uuid.uuid4()), "type": "message.statuses", "data": {"lead_ids": ["7", True, -1]}},
    ])
    assert not LeadFact.objects.exists() and ProcessedEvent.objects.filter(consumer="analytics").count() == 2


def test_an_edited_source_moves_the_lead_between_rollups():
    org, _ = org_with_key()
    lead = make_lead_history(org, phone(), at=MONDAY, response_ms=800, source="website")
    services.refresh([lead.pk])
    Lead.objects.filter(pk=lead.pk).update(source="partner")
    services.refresh([lead.pk])

    counts = {row.source: (row.leads, row.greeted) for row in HourlyStat.objects.filter(organization=org)}
    assert counts == {"website": (0, 0), "partner": (1, 1)}


def test_rollups_agree_with_the_facts_they_were_built_from():
    org, _ = org_with_key()
    leads = []
    for i in range(40):
        lead = make_lead_history(org, phone(), at=MONDAY + dt.timedelta(minutes=7 * i), response_ms=[None, 400, 3000, 70_000][i % 4],
                                 delivered=i % 3 == 0, replied=i % 5 == 0, source=["a", "b"][i % 2])
        leads.append(lead)
        services.refresh([lead.pk])  # facts arrive lead by lead ...
    services.refresh([lead.pk for lead in leads[::2]])  # ... and again, in another order

    facts = LeadFact.objects.filter(organization=org)
    assert stats(org)["leads"] == facts.count() == 40
    assert stats(org)["greeted"] == facts.exclude(first_response_ms=None).count() == 30
    assert stats(org)["within_5s"] == facts.filter(first_response_ms__lte=5000).count() == 20
    assert stats(org)["delivered"] == facts.exclude(delivered_at=None).count()


# --- what the dashboard computes -----------------------------------------------------


def test_percentiles_are_exact_on_a_known_distribution():
    org, _ = org_with_key()
    ids = [make_lead_history(org, phone(), at=MONDAY + dt.timedelta(minutes=i), response_ms=(i + 1) * 100).pk for i in range(100)]
    ids.append(make_lead_history(org, phone(), at=MONDAY).pk)  # never answered: counted apart, not a time
    services.refresh(ids)

    totals = selectors.summary(org, week(org), now=MONDAY + dt.timedelta(days=1))

    # 100, 200, ..., 10,000 ms: linear interpolation between closest ranks (numpy's default)
    assert (totals["p50"], totals["p95"], totals["p99"]) == pytest.approx((5050.0, 9505.0, 9901.0))
    assert (totals["leads"], totals["greeted"], totals["unanswered"]) == (101, 100, 1)
    assert totals["within_5s_share"] == pytest.approx(50 / 101)
    # target 60 s: every answer was faster, the unanswered lead breached
    assert totals["breaches"] == 1


def test_funnel_counts_each_step():
    org, _ = org_with_key()
    ids = [make_lead_history(org, phone(), at=MONDAY, response_ms=500, delivered=True, replied=True, qualified=True).pk,
           make_lead_history(org, phone(), at=MONDAY, response_ms=500, delivered=True, replied=True).pk,
           make_lead_history(org, phone(), at=MONDAY, response_ms=500, read=True).pk,  # read without a "delivered" receipt
           make_lead_history(org, phone(), at=MONDAY, response_ms=500).pk,
           make_lead_history(org, phone(), at=MONDAY).pk]
    services.refresh(ids)

    steps = selectors.funnel(selectors.summary(org, week(org)))
    assert [(s["label"], s["count"]) for s in steps] == [
        ("Captured", 5), ("Greeted", 4), ("Delivered", 3), ("Replied", 2), ("Qualified", 1),
    ]
    assert steps[2]["share"] == pytest.approx(0.6)


def test_breakdowns_histogram_trend_and_breaches():
    org, _ = org_with_key(first_response_target_seconds=5)
    ana = make_rep(org, "ana")
    ids = [make_lead_history(org, phone(), at=MONDAY, response_ms=800, rep=ana, source="google").pk,
           make_lead_history(org, phone(), at=MONDAY + dt.timedelta(days=1), response_ms=9000, channel="sms", source="google").pk,
           make_lead_history(org, phone(), at=MONDAY + dt.timedelta(days=1), source="partner", name="Silent Sam").pk]
    services.refresh(ids)
    rng = week(org)

    tables = {name: selectors.breakdown(org, rng, name) for name in selectors.BREAKDOWNS}
    assert [row["label"] for row in tables["source"]] == ["google", "partner"]  # busiest first
    google = tables["source"][0]
    assert (google["leads"], google["answered"], google["p50"], google["breaches"]) == (2, 2, 4900.0, 1)
    assert (google["within_5s_share"], google["within_60s_share"], google["within_5m_share"]) == (0.5, 1.0, 1.0)
    assert [(row["label"], row["leads"]) for row in tables["campaign"]] == [("(none)", 3)]
    assert {row["label"]: row["leads"] for row in tables["rep"]} == {"Unassigned": 2, "Ana": 1}
    assert {row["label"]: row["leads"] for row in tables["channel"]} == {"whatsapp": 1, "sms": 1, "(none)": 1}
    bands = {band["label"]: band["count"] for band in selectors.histogram(org, rng)}
    assert bands["0.5–1 s"] == 1 and bands["5–10 s"] == 1 and list(bands)[0] == "< 0.5 s" and sum(bands.values()) == 2
    points = selectors.trend(org, rng)
    assert len(points) == 7 and [p["leads"] for p in points[:3]] == [1, 2, 0]
    assert points[1]["p50"] == 9000.0 and points[2]["p50"] is None
    assert [b["name"] for b in selectors.breaches(org, rng)] == ["Silent Sam", "Ana"]


def test_the_trend_reads_clock_changes_by_their_real_length():
    # New York, 2026-11-01: the clocks go back at 02:00, so 01:00-02:00 local happens twice.
    org, _ = org_with_key(timezone="America/New_York")
    first_one_am = dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT
    ids = [make_lead_history(org, phone(), at=first_one_am + dt.timedelta(hours=h), response_ms=500).pk for h in (0, 1)]
    services.refresh(ids)
    hours = selectors.trend(org, selectors.date_range(org, "2026-11-01", "2026-11-01"))
    one_am = next(p for p in hours if p["at"].hour == 1)
    assert len(hours) == 24 and one_am["leads"] == 2 and one_am["per_minute"] == 2 / 120  # two hours long
    days = selectors.trend(org, selectors.date_range(org, "2026-10-31", "2026-11-04"))
    assert days[1]["per_minute"] == 2 / (25 * 60)  # a 25-hour day

    spring = selectors.trend(org, selectors.date_range(org, "2026-03-08", "2026-03-08"))
    assert len(spring) == 23 and 2 not in [p["at"].hour for p in spring]  # 02:00-03:00 never happened


def test_ranges_are_local_days_and_bad_ranges_say_what_is_wrong():
    org, _ = org_with_key(timezone="America/Sao_Paulo")
    rng = selectors.date_range(org, "2026-11-16", "2026-11-16")
    assert rng.start == dt.datetime(2026, 11, 16, 3, 0, tzinfo=UTC) and rng.bucket == "hour"
    assert selectors.date_range(org, None, None, today=dt.date(2026, 11, 25)).first_day == dt.date(2026, 11, 19)
    for first, last, message in (("2026-11-20", "2026-11-10", "starts"), ("yesterday", None, "not a date"),
                                 ("2026-01-01", "2026-12-31", "at most 92 days"), ("0001-01-01", None, "outside"),
                                 (None, "9999-12-31", "outside")):
        with pytest.raises(selectors.BadRange, match=message):
            selectors.date_range(org, first, last)


# --- pages ------------------------------------------------------------------------------


@pytest.fixture
def seeded():
    org, _ = org_with_key(timezone="UTC")
    boss, ana = make_rep(org, "boss", role="manager"), make_rep(org, "ana")
    ids = [make_lead_history(org, phone(), at=MONDAY + dt.timedelta(hours=i), response_ms=700 + 10 * i, rep=ana,
                             source="=HYPERLINK(\"http://evil\")" if i == 0 else "website").pk for i in range(5)]
    services.refresh(ids)
    return org, boss, ana


def test_the_dashboard_shows_a_managers_organization_only(seeded):
    org, boss, ana = seeded
    other, _ = org_with_key()
    services.refresh([make_lead_history(other, phone(), at=MONDAY, response_ms=99_999, source="elsewhere").pk])

    page = login(boss).get("/app/analytics/?from=2026-11-16&to=2026-11-22")

    assert page.status_code == 200
    html = page.content.decode()
    assert "Speed to lead" in html and "<svg" in html and "By rep" in html
    assert "elsewhere" not in html and "1.67 min" not in html
    assert page.context["totals"]["leads"] == 5 and page.context["totals"]["p50"] == 720.0
    assert login(ana).get("/app/analytics/").status_code == 403
    assert Client().get("/app/analytics/").status_code == 302


def test_a_bad_range_is_explained_on_the_page(seeded):
    _, boss, _ = seeded
    page = login(boss).get("/app/analytics/?from=2026-11-22&to=2026-11-01")
    assert page.status_code == 400
    assert "starts (2026-11-22) after it ends (2026-11-01)" in page.content.decode()


def test_csv_export_has_every_fact_and_defuses_formulas(seeded):
    org, boss, ana = seeded
    response = login(boss).get("/app/analytics/export.csv?from=2026-11-16&to=2026-11-16")

    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 5
    assert rows[0]["source"].startswith("'=HYPERLINK")
    assert rows[1]["first_response_ms"] == "710" and rows[1]["rep"] == "Ana" and rows[1]["channel"] == "whatsapp"
    assert login(boss).get("/app/analytics/export.csv?from=bad").status_code == 400
    assert login(ana).get("/app/analytics/export.csv").status_code == 403


def test_a_rep_status_change_and_a_batch_of_receipts_reach_the_facts(seeded):
    """The producers: a rep qualifying a lead, and the receipts applier's one event per batch."""
    from conversations import receipts
    from conversations.models import Message
    from reps.services import change_status
    from swiftex.models import OutboxEvent

    def deliver_outbox(event_type):
        row = OutboxEvent.objects.filter(event_type=event_type).latest("pk")
        handle_events([{"id": str(row.event_id), "type": row.event_type, "data": row.payload}])
        return row

    org, boss, ana = seeded
    first, second = Lead.objects.filter(organization=org).order_by("pk")[:2]
    change_status(lead=first, by=str(ana), status=Lead.Status.QUALIFIED)
    deliver_outbox("lead.status_changed")
    assert LeadFact.objects.get(lead=first).qualified_at is not None

    for lead, wamid in ((first, "wamid.one"), (second, "wamid.two")):
        Message.objects.filter(lead=lead, direction="outbound").update(provider_message_id=wamid, read_at=None, delivered_at=None)
    read_at = MONDAY + dt.timedelta(seconds=3)
    receipts.enqueue(org, [receipts.StatusReport("whatsapp", "wamid.one", "read", read_at),
                           receipts.StatusReport("whatsapp", "wamid.two", "sent", read_at)])
    receipts.apply_pending()

    assert deliver_outbox("message.statuses").payload == {"lead_ids": [first.pk]}  # "sent" changes no fact
    fact = LeadFact.objects.get(lead=first)
    assert fact.read_at == fact.delivered_at == read_at


def test_rebuild_backfills_leads_from_before_analytics_and_resets_drifted_rollups():
    from django.core.management import call_command

    org, _ = org_with_key()
    ids = [make_lead_history(org, phone(), at=MONDAY, response_ms=600 * (i + 1)).pk for i in range(3)]
    call_command("analytics_rebuild", organization=org.pk, stdout=io.StringIO())
    assert LeadFact.objects.filter(lead_id__in=ids).count() == 3 and stats(org)["greeted"] == 3

    HourlyStat.objects.filter(organization=org).update(leads=99)  # drifted, e.g. edited by hand
    call_command("analytics_rebuild", organization=org.pk, since=dt.date(2026, 11, 16), reset=True, stdout=io.StringIO())
    assert stats(org)["leads"] == 3
