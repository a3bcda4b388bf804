"""Lead routing: rules, fair distribution under concurrency, capacity, working hours, escalation."""

from __future__ import annotations

import datetime
from collections import Counter
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from leads.models import Lead, LeadEvent
from leads.services import LeadInput, lead_ingest
from routing import notify, selectors, services
from routing.models import Assignment, Notification, RoutingRule
from tests.factories import make_rep, make_team, org_with_key
from tests.support import api_client, post_json, race

pytestmark = pytest.mark.django_db

_phones = iter(range(10_000_000))


def submit(org, *, phone: str | None = None, source: str = "website", campaign: str = "", metadata=None, at=None):
    data = LeadInput(
        source=source, campaign=campaign, phone=phone or f"+1415{next(_phones):07d}", name="Ana", metadata=metadata or {},
    )
    result = lead_ingest(org=org, data=data, payload={}, received_at=at)
    return Assignment.objects.select_related("rep__user").filter(lead_id=result.lead_id).first()


def rule(org, team, position=0, **conditions):
    return RoutingRule.objects.create(organization=org, team=team, position=position, name=f"rule {position}", **conditions)


def kinds(lead_id) -> list[str]:
    return list(LeadEvent.objects.filter(lead_id=lead_id).values_list("kind", flat=True))


@pytest.fixture
def org():
    return org_with_key()[0]


def test_organization_without_rules_or_fallback_assigns_nobody_and_adds_no_query(org):
    lead_ingest(org=org, data=LeadInput(source="website", phone="+14155550100"), payload={})  # caches "no rules"
    with CaptureQueriesContext(connection) as queries:
        lead_ingest(org=org, data=LeadInput(source="website", phone="+14155550101"), payload={})
    assert not [q["sql"] for q in queries if "routing_" in q["sql"]]
    assert not Assignment.objects.exists()


def test_first_matching_rule_in_position_order_picks_the_team(org):
    uk, partners, web = (make_team(org, name, [make_rep(org, name.lower())]) for name in ("UK", "Partners", "Web"))
    rule(org, web, position=30, sources="website, landing")
    rule(org, uk, position=10, countries="GB, IE")
    rule(org, partners, position=20, metadata_key="partner", metadata_values="acme, globex")
    rule(org, uk, position=5, phone_prefixes="+4420", active=False)

    assert submit(org, phone="+447700900123").team == uk
    assert submit(org, metadata={"partner": "ACME"}).team == partners
    assert submit(org, source="Landing").team == web
    assert submit(org, source="facebook", metadata={"partner": "initech"}).rep is None  # nothing matches, no fallback


def test_rule_conditions_must_all_hold(org):
    team = make_team(org, "Spring", [make_rep(org, "ana")])
    rule(org, team, sources="facebook", campaigns="spring-sale", phone_prefixes="+1415", metadata_key="vip")

    assert submit(org, source="facebook", campaign="Spring-Sale", metadata={"vip": "yes"}).team == team
    assert submit(org, source="facebook", campaign="spring-sale", metadata={}).team is None
    assert submit(org, source="facebook", campaign="spring-sale", phone="+12125550100", metadata={"vip": 1}).team is None


def test_unmatched_lead_goes_to_the_fallback_owner(org):
    boss = make_rep(org, "boss")
    org.fallback_owner = boss
    org.save()
    assignment = submit(org, source="anything")
    assert assignment.rep == boss
    entry = LeadEvent.objects.get(lead_id=assignment.lead_id, kind="lead.assigned")
    assert entry.data["via"] == "fallback" and entry.data["reason"] == "no routing rule matched"


def test_unassigned_lead_says_why_on_its_timeline(org):
    team = make_team(org, "Night", [make_rep(org, "ana", out_of_office_until=timezone.now() + timedelta(days=1))])
    rule(org, team)
    assignment = submit(org)
    assert assignment.rep is None
    entry = LeadEvent.objects.get(lead_id=assignment.lead_id, kind="lead.unassigned")
    assert entry.data["skipped"] == {"Ana": "out of office"}
    assert "no fallback owner" in entry.data["reason"]


def test_a_rule_deleted_in_another_process_matches_nothing_instead_of_failing_the_lead(org, settings):
    settings.ORGANIZATION_CACHE_SECONDS = 60
    boss = make_rep(org, "boss")
    org.fallback_owner = boss
    org.save()
    doomed = rule(org, make_team(org, "Sales", [make_rep(org, "ana")]))
    assert submit(org).rep.user.username == "ana"  # the rules are cached now
    doomed.delete()  # in admin, i.e. another process: this one's cache still has the rule

    assignment = submit(org)
    assert assignment.rep == boss and assignment.rule_id is None
    entry = LeadEvent.objects.get(lead_id=assignment.lead_id, kind="lead.assigned")
    assert entry.data["reason"] == "no routing rule matched"

    rule(org, make_team(org, "Web", [make_rep(org, "cy")]), position=5)
    selectors.forget_rules(org.pk)  # the cache's time is up
    assert submit(org).rep.user.username == "cy"  # and [web] is cached now
    RoutingRule.objects.filter(team__name="Web").delete()
    later = rule(org, make_team(org, "Later", [make_rep(org, "dee")]), position=9)
    assert submit(org).rep.user.username == "dee" and later.pk  # the next matching rule, read afresh


def test_an_absent_fallback_owner_gets_no_leads_and_takes_them_once_back(org):
    now = timezone.now()
    boss = make_rep(org, "boss", out_of_office_until=now + timedelta(hours=1))
    org.fallback_owner = boss
    org.save()
    assignment = submit(org, at=now)
    assert assignment.rep is None and assignment.escalate_at == now + services.UNASSIGNED_RETRY
    entry = LeadEvent.objects.get(lead_id=assignment.lead_id, kind="lead.unassigned")
    assert entry.data["reason"] == "no routing rule matched and the fallback owner is out of office"

    assert services.escalate_due(now=now + timedelta(minutes=5)) == 0  # still away: it waits
    assert services.escalate_due(now=now + timedelta(hours=1, minutes=1)) == 1
    assignment.refresh_from_db()
    assert assignment.rep == boss and assignment.escalate_at is None
    assert Notification.objects.filter(rep=boss, lead_id=assignment.lead_id).exists()


def test_a_teams_lead_held_by_the_fallback_owner_goes_to_the_first_teammate_back_even_without_escalation(org):
    now = timezone.now()
    boss = make_rep(org, "boss")
    ana = make_rep(org, "ana", out_of_office_until=now + timedelta(minutes=30))
    org.fallback_owner, org.escalation_minutes = boss, 0
    org.save()
    rule(org, make_team(org, "Night", [ana]))
    assignment = submit(org, at=now)
    assert assignment.rep == boss

    assert services.escalate_due(now=now + timedelta(minutes=5)) == 0
    assert services.escalate_due(now=now + timedelta(minutes=31)) == 1
    assignment.refresh_from_db()
    assert assignment.rep == ana
    entry = LeadEvent.objects.get(lead_id=assignment.lead_id, kind="lead.reassigned")
    assert entry.data["reason"] == "a team member is available again" and entry.data["from"] == "Boss"
    assert assignment.escalate_at is None  # escalation is off: ana keeps it


def test_a_batch_routes_its_new_leads_at_the_end_team_by_team():
    org, key = org_with_key()
    ana, ben, cy = make_rep(org, "ana"), make_rep(org, "ben"), make_rep(org, "cy")
    rule(org, make_team(org, "Ads", [ana, ben]), position=0, sources="ads")
    rule(org, make_team(org, "Web", [cy]), position=1)
    leads = [{"phone": f"+1415666{i:04d}", "source": source} for i, source in enumerate(["ads", "web", "ads", "web", "ads"])]
    response = post_json(api_client(key), "/api/v1/leads/batch", {"leads": leads})
    assert response.status_code == 200 and response.json()["summary"]["created"] == 5
    owners = [Assignment.objects.select_related("rep__user").get(lead_id=r["lead"]["id"]).rep.user.username
              for r in response.json()["results"]]
    assert owners == ["ana", "cy", "ben", "cy", "ana"]  # each team's round robin in the order the leads were stored


def test_a_teams_lead_nobody_could_take_goes_to_the_fallback_owner_once_they_are_back(org):
    now = timezone.now()
    boss = make_rep(org, "boss", out_of_office_until=now + timedelta(minutes=10))
    ana = make_rep(org, "ana", out_of_office_until=now + timedelta(hours=2))
    org.fallback_owner = boss
    org.save()
    rule(org, make_team(org, "Night", [ana]))
    assignment = submit(org, at=now)
    assert assignment.rep is None

    assert services.escalate_due(now=now + timedelta(minutes=11)) == 1
    assignment.refresh_from_db()
    assert assignment.rep == boss and assignment.escalate_at is not None  # still offered to the team
    assert services.escalate_due(now=now + timedelta(hours=2, minutes=1)) == 1
    assignment.refresh_from_db()
    assert assignment.rep == ana


def test_round_robin_gives_each_rep_one_lead_in_turn(org):
    reps = [make_rep(org, name) for name in ("ana", "ben", "cy")]
    rule(org, make_team(org, "Sales", reps))
    assert [submit(org).rep for _ in range(7)] == reps * 2 + reps[:1]


def test_weighted_team_distributes_in_proportion_to_weights(org):
    ana, ben = make_rep(org, "ana"), make_rep(org, "ben")
    rule(org, make_team(org, "Sales", [ana, ben], distribution="weighted", weights=[3, 1]))
    picks = [submit(org).rep for _ in range(8)]
    assert Counter(picks) == {ana: 6, ben: 2}
    assert picks[:4].count(ben) == 1  # interleaved, not three in a row then one


def test_reps_at_capacity_are_skipped_until_a_lead_closes(org):
    ana, ben = make_rep(org, "ana", max_open_leads=1), make_rep(org, "ben")
    rule(org, make_team(org, "Sales", [ana, ben]))
    first = submit(org)
    assert first.rep == ana
    assert [submit(org).rep for _ in range(3)] == [ben, ben, ben]
    skipped = LeadEvent.objects.filter(kind="lead.assigned").order_by("pk").last().data["skipped"]
    assert skipped == {"Ana": "at capacity (1 open leads)"}

    Lead.objects.filter(pk=first.lead_id).update(status=Lead.Status.WON)
    assert Counter(submit(org).rep for _ in range(2)) == {ana: 1, ben: 1}


def test_working_hours_and_out_of_office_are_respected(org):
    org.timezone = "Europe/Lisbon"
    org.save()
    monday_10am = datetime.datetime(2026, 11, 23, 10, 0, tzinfo=datetime.timezone.utc)  # 10:00 in Lisbon
    day = make_rep(org, "day", working_hours_start=datetime.time(9), working_hours_end=datetime.time(17), working_days="1,2,3,4,5")
    night = make_rep(org, "night", working_hours_start=datetime.time(22), working_hours_end=datetime.time(6), working_days="1,2,3,4,5")
    away = make_rep(org, "away", out_of_office_until=monday_10am + timedelta(hours=1))
    rule(org, make_team(org, "Sales", [day, night, away]))

    assert [submit(org, at=monday_10am).rep for _ in range(2)] == [day, day]
    noon = monday_10am + timedelta(hours=2)  # away is back, and gets no burst for the time away
    assert [submit(org, at=noon).rep for _ in range(4)] == [day, away, day, away]
    assert submit(org, at=monday_10am + timedelta(hours=13)).rep == night  # 23:00 Monday
    # 02:00 on Saturday is the end of Friday's night shift; 23:00 Saturday is no one's shift but away's.
    saturday_2am = datetime.datetime(2026, 11, 28, 2, 0, tzinfo=datetime.timezone.utc)
    assert submit(org, at=saturday_2am).rep in (night, away)
    assert day.unavailable_because(saturday_2am, org.timezone) == "outside working hours"
    assert night.unavailable_because(saturday_2am, org.timezone) == ""
    assert night.unavailable_because(saturday_2am + timedelta(hours=21), org.timezone) == "outside working hours"


def test_assignment_is_on_the_timeline_and_notifies_the_rep_in_app_and_by_email(org, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    ana = make_rep(org, "ana", email="ana@example.com", email_notifications=True)
    ben = make_rep(org, "ben")
    rule(org, make_team(org, "Sales", [ana, ben]))
    first, second = submit(org), submit(org)

    entry = LeadEvent.objects.get(lead_id=first.lead_id, kind="lead.assigned")
    assert entry.data.items() >= {"rep": "Ana", "rep_id": ana.pk, "team": "Sales", "rule": "rule 0", "via": "rule"}.items()
    assert Notification.objects.get(rep=ana).email == Notification.Email.PENDING
    assert Notification.objects.get(rep=ben).email == Notification.Email.NONE  # asked for no e-mail

    assert notify.send_pending() == 1
    assert [m.to for m in mail.outbox] == [["ana@example.com"]]
    assert f"/app/leads/{first.lead_id}" in mail.outbox[0].body
    assert Notification.objects.get(rep=ana).email == Notification.Email.SENT
    assert second.rep == ben


def test_a_line_break_in_a_notification_does_not_break_its_e_mail(org, settings):
    """Django refuses a subject with a line break: a lead's name must not silence the e-mail about it."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    rule(org, make_team(org, "Sales", [make_rep(org, "ana", email="ana@example.com", email_notifications=True)]))
    lead = submit(org)
    Notification.objects.filter(lead_id=lead.lead_id).update(text="New lead: Ana\nBcc: someone@example.com")
    assert notify.send_pending() == 1
    assert mail.outbox[0].subject == "[Swiftex] New lead: Ana Bcc: someone@example.com" and mail.outbox[0].bcc == []


def test_failed_notification_email_is_kept_failed_with_its_error(org, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1  # nothing listens on discard
    rule(org, make_team(org, "Sales", [make_rep(org, "ana", email="ana@example.com", email_notifications=True)]))
    submit(org)
    assert notify.send_pending() == 0
    notification = Notification.objects.get()
    assert notification.email == Notification.Email.FAILED and "ConnectionRefusedError" in notification.email_error


def test_a_worker_killed_mid_batch_never_sends_an_e_mail_twice(org, settings, monkeypatch):
    from django.core.mail import EmailMessage

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    rule(org, make_team(org, "Sales", [make_rep(org, "ana", email="ana@example.com", email_notifications=True)]))
    first, second = submit(org), submit(org)
    real_send, sends = EmailMessage.send, []

    def killed_on_the_second(message, *args, **kwargs):
        sends.append(1)
        if len(sends) == 2:
            raise SystemExit("worker killed")
        return real_send(message, *args, **kwargs)

    monkeypatch.setattr(EmailMessage, "send", killed_on_the_second)
    with pytest.raises(SystemExit):
        notify.send_pending()
    monkeypatch.setattr(EmailMessage, "send", real_send)
    states = dict(Notification.objects.values_list("lead_id", "email"))
    assert states == {first.lead_id: "sent", second.lead_id: "sending"} and len(mail.outbox) == 1

    assert notify.send_pending() == 0 and len(mail.outbox) == 1  # the first is not sent again, the second not blindly
    Notification.objects.filter(email="sending").update(email_started_at=timezone.now() - notify.STUCK_AFTER)
    notify.send_pending()
    unsure = Notification.objects.get(lead_id=second.lead_id)
    assert unsure.email == "failed" and "may have arrived" in unsure.email_error and len(mail.outbox) == 1


def test_known_contact_resubmitting_keeps_the_owner(org):
    reps = [make_rep(org, "ana"), make_rep(org, "ben")]
    rule(org, make_team(org, "Sales", reps))
    first = submit(org, phone="+14155550100")
    again = submit(org, phone="+14155550100")
    assert again == first and Assignment.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_captures_are_shared_exactly_evenly():
    org, key = org_with_key()
    reps = [make_rep(org, name) for name in ("ana", "ben", "cy")]
    rule(org, make_team(org, "Sales", reps))
    client = api_client(key)

    responses = race(30, lambda i: post_json(client, "/api/v1/leads", {"phone": f"+1415555{i:04d}", "source": "web"}))

    assert [r.status_code for r in responses] == [201] * 30
    counts = Counter(Assignment.objects.values_list("rep__user__username", flat=True))
    assert counts == {"ana": 10, "ben": 10, "cy": 10}


@pytest.mark.django_db(transaction=True)
def test_concurrent_captures_never_push_a_rep_past_capacity():
    org, key = org_with_key()
    busy = make_rep(org, "busy", max_open_leads=3)
    # Two teams share the capacity-limited rep: the team locks alone would not stop the race.
    rule(org, make_team(org, "A", [busy]), position=1, sources="a")
    rule(org, make_team(org, "B", [busy]), position=2, sources="b")
    client = api_client(key)

    responses = race(20, lambda i: post_json(client, "/api/v1/leads", {"phone": f"+1415666{i:04d}", "source": "ab"[i % 2]}))

    assert all(r.status_code == 201 for r in responses)
    assert Assignment.objects.filter(rep=busy).count() == 3
    assert Assignment.objects.filter(rep__isnull=True).count() == 17


def test_escalation_moves_an_untouched_lead_to_the_next_teammate(org):
    org.escalation_minutes = 10
    org.save()
    ana, ben = make_rep(org, "ana"), make_rep(org, "ben")
    rule(org, make_team(org, "Sales", [ana, ben]))
    start = timezone.now()
    untouched, worked = submit(org, at=start), submit(org, at=start)
    services.record_action(worked.lead_id)

    assert services.escalate_due(now=start + timedelta(minutes=9)) == 0
    assert services.escalate_due(now=start + timedelta(minutes=10)) == 1

    untouched.refresh_from_db()
    assert untouched.rep == ben and untouched.reassignments == 1
    assert untouched.escalate_at == start + timedelta(minutes=20)
    entry = LeadEvent.objects.get(lead_id=untouched.lead_id, kind="lead.reassigned")
    assert entry.data.items() >= {"from": "Ana", "to": "Ben", "reason": "escalation", "waited_minutes": 10}.items()
    assert Notification.objects.filter(rep=ben, lead_id=untouched.lead_id, text__contains="after 10 min").exists()
    worked.refresh_from_db()
    assert worked.rep == ben and worked.escalate_at is None  # round robin gave it to ben, who acted


def test_escalation_with_nobody_else_available_keeps_the_rep_and_says_so(org):
    org.escalation_minutes = 5
    org.save()
    ana, ben = make_rep(org, "ana"), make_rep(org, "ben")
    rule(org, make_team(org, "Sales", [ana, ben]))
    start = timezone.now()
    assignment = submit(org, at=start)
    ben.out_of_office_until = start + timedelta(days=2)
    ben.save()

    assert services.escalate_due(now=start + timedelta(minutes=6)) == 0
    assignment.refresh_from_db()
    assert assignment.rep == ana and assignment.escalate_at is None
    entry = LeadEvent.objects.get(lead_id=assignment.lead_id, kind="lead.escalation_skipped")
    assert entry.data["skipped"] == {"Ben": "out of office"}


def test_escalation_goes_round_the_team_once_instead_of_back_and_forth(org):
    org.escalation_minutes = 5
    org.save()
    ana, ben, cleo = make_rep(org, "ana"), make_rep(org, "ben"), make_rep(org, "cleo")
    rule(org, make_team(org, "Sales", [ana, ben, cleo]))
    start = timezone.now()
    assignment = submit(org, at=start)
    holders = [assignment.rep.user.username]
    for minutes in (5, 10, 15):
        services.escalate_due(now=start + timedelta(minutes=minutes))
        assignment.refresh_from_db()
        holders.append(assignment.rep.user.username)

    assert holders[:3] == ["ana", "ben", "cleo"] and holders[3] == "cleo"  # nobody gets it back
    assert assignment.escalate_at is None and assignment.reassignments == 2
    entry = LeadEvent.objects.get(lead_id=assignment.lead_id, kind="lead.escalation_skipped")
    assert entry.data["reason"] == "every team member has had this lead"
    assert Notification.objects.filter(lead_id=assignment.lead_id).count() == 3


def test_closed_leads_do_not_escalate(org):
    org.escalation_minutes = 5
    org.save()
    rule(org, make_team(org, "Sales", [make_rep(org, "ana"), make_rep(org, "ben")]))
    start = timezone.now()
    assignment = submit(org, at=start)
    Lead.objects.filter(pk=assignment.lead_id).update(status=Lead.Status.LOST)
    assert services.escalate_due(now=start + timedelta(hours=1)) == 0
    assert "lead.reassigned" not in kinds(assignment.lead_id)


def test_manual_reassignment_is_recorded_and_restarts_the_clock(org):
    org.escalation_minutes = 30
    org.save()
    ana, ben = make_rep(org, "ana"), make_rep(org, "ben")
    rule(org, make_team(org, "Sales", [ana, ben]))
    assignment = submit(org)
    services.reassign(Lead.objects.get(pk=assignment.lead_id), ben, by="boss", reason="manual")
    assignment.refresh_from_db()
    assert assignment.rep == ben and assignment.escalate_at > timezone.now() + timedelta(minutes=29)
    entry = LeadEvent.objects.get(lead_id=assignment.lead_id, kind="lead.reassigned")
    assert entry.data.items() >= {"from": "Ana", "to": "Ben", "by": "boss", "reason": "manual"}.items()


def test_a_lead_that_arrived_while_nobody_was_available_goes_to_the_first_rep_back(org):
    start = timezone.now()
    ana = make_rep(org, "ana", out_of_office_until=start + timedelta(minutes=7))
    rule(org, make_team(org, "Sales", [ana]))
    assignment = submit(org, at=start)
    assert assignment.rep is None and assignment.escalate_at == start + timedelta(minutes=5)

    assert services.escalate_due(now=start + timedelta(minutes=5)) == 0  # still away: asked again later
    assert services.escalate_due(now=start + timedelta(minutes=10)) == 1
    assignment.refresh_from_db()
    assert assignment.rep == ana and assignment.reassignments == 0
    entry = LeadEvent.objects.get(lead_id=assignment.lead_id, kind="lead.reassigned")
    assert entry.data["reason"] == "nobody was available when it arrived" and entry.data["from"] is None
    assert Notification.objects.filter(rep=ana, text__contains="assigned to you").exists()
