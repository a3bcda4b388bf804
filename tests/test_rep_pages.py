"""Rep pages: my leads, the lead page, replies and status changes, live updates, and the tenancy line."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from conversations.models import Channel, Conversation, Message
from leads.models import ApiKey, Lead, LeadEvent, Organization
from leads.services import LeadInput, lead_ingest
from routing.models import Assignment, RoutingRule
from swiftex.models import OutboxEvent
from tests.factories import make_rep, make_team, org_with_key, org_with_providers

pytestmark = pytest.mark.django_db


def login(rep) -> Client:
    client = Client()
    client.force_login(rep.user)
    return client


def new_lead(org, phone: str, *, name: str = "Ana Lima", consent: bool = True, **fields) -> Lead:
    result = lead_ingest(org=org, data=LeadInput(source="website", phone=phone, name=name, consent=consent, **fields), payload={})
    return Lead.objects.get(pk=result.lead_id)


@pytest.fixture
def team_org():
    """An organization with WhatsApp and SMS set up, two reps in one round-robin team, a manager."""
    org, _ = org_with_providers()
    ana, ben = make_rep(org, "ana"), make_rep(org, "ben")
    boss = make_rep(org, "boss", role="manager")
    RoutingRule.objects.create(organization=org, name="all", team=make_team(org, "Sales", [ana, ben]))
    return org, ana, ben, boss


def test_pages_need_a_login_and_a_rep(team_org):
    org, ana, *_ = team_org
    lead = new_lead(org, "+14155550100")
    assert Client().get("/app/leads/").status_code == 302
    assert Client().get(f"/app/leads/{lead.pk}").url.startswith("/accounts/login/")
    from django.contrib.auth.models import User

    stranger = Client()
    stranger.force_login(User.objects.create_user("stranger"))
    assert stranger.get("/app/leads/").status_code == 403


def test_my_leads_lists_the_reps_leads_most_urgent_first(team_org):
    org, ana, ben, _ = team_org
    older = new_lead(org, "+14155550100", name="Older")  # ana
    new_lead(org, "+14155550101", name="Bens")  # ben
    newer = new_lead(org, "+14155550102", name="Newer")  # ana
    Lead.objects.filter(pk__in=[older.pk, newer.pk]).update(status=Lead.Status.CONTACTED)
    Assignment.objects.filter(lead=newer).update(acted_at=timezone.now())  # ana already worked it

    page = login(ana).get("/app/leads/").content.decode()
    assert page.index("Older") < page.index("Newer")  # untouched before worked
    assert "Bens" not in page  # ben's, and the default view is "mine"
    everyone = login(ana).get("/app/leads/?scope=all").content.decode()
    assert "Bens" in everyone
    bens_row = everyone[everyone.index("Bens"):].split("</tr>")[0]
    assert "New for you" not in bens_row  # it is new for ben
    assert "New for you" in page[page.index("Older"):].split("</tr>")[0]


def test_search_and_filters(team_org):
    org, ana, *_ = team_org
    new_lead(org, "+14155550100", name="Carla Dias")
    new_lead(org, "+14155550102", name="Dora Reis")
    client = login(ana)
    assert "Carla" in client.get("/app/leads/?q=carla").content.decode()
    assert "Dora" not in client.get("/app/leads/?q=carla&scope=all").content.decode()
    assert "Dora" in client.get("/app/leads/?q=555-0102&scope=all").content.decode()  # ben's lead, any spelling of the number
    assert "Carla" not in client.get("/app/leads/?status=closed").content.decode()
    assert client.get("/app/leads/?q=car%00la&source=web%00site").status_code == 200  # not a 500 from PostgreSQL


def test_the_list_refreshes_as_a_fragment(team_org):
    org, ana, *_ = team_org
    new_lead(org, "+14155550100", name="Fresh Lead")
    fragment = login(ana).get("/app/leads/?partial=1").content.decode()
    assert "Fresh Lead" in fragment and "<html" not in fragment


def test_lead_page_shows_timeline_messages_owner_and_first_touch(team_org):
    org, ana, *_ = team_org
    lead = new_lead(org, "+14155550100")
    page = login(ana).get(f"/app/leads/{lead.pk}").content.decode()
    assert "Ana Lima" in page and "Lead captured" in page and "Assigned" in page and "Sales" in page
    assert 'name="token"' in page  # the reply box


def test_a_reply_inside_the_window_goes_as_text_once_per_form(team_org, django_capture_on_commit_callbacks):
    org, ana, *_ = team_org
    lead = new_lead(org, "+14155550100")
    Conversation.objects.create(organization=org, contact=lead.contact, channel=Channel.WHATSAPP, last_inbound_at=timezone.now())
    client, token = login(ana), str(uuid.uuid4())
    with django_capture_on_commit_callbacks() as callbacks:
        for _ in range(2):  # a double click
            response = client.post(f"/app/leads/{lead.pk}/reply", {"body": "Hi Ana, Bruno here.", "token": token})
            assert response.status_code == 302
    message = Message.objects.get(sent_by=ana)
    assert (message.channel, message.body, message.template_name, message.status) == ("whatsapp", "Hi Ana, Bruno here.", "", "queued")
    assert len(callbacks) == 1  # one send task
    assert Assignment.objects.get(lead=lead).acted_at is not None  # the rep acted: no escalation
    assert LeadEvent.objects.filter(lead=lead, kind="message.written").count() == 1


def test_a_reply_drawn_inside_the_window_is_not_sent_as_a_template_after_it_closed(team_org):
    org, ana, *_ = team_org
    lead = new_lead(org, "+14155550100")
    conversation = Conversation.objects.create(organization=org, contact=lead.contact, channel=Channel.WHATSAPP,
                                               last_inbound_at=timezone.now() - timedelta(hours=23, minutes=59))
    client = login(ana)
    page = client.get(f"/app/leads/{lead.pk}").content.decode()
    offered = re.search(r'name="mode" value="([^"]*)"', page).group(1)
    assert offered == "whatsapp:"  # free text, the window is open
    Conversation.objects.filter(pk=conversation.pk).update(last_inbound_at=timezone.now() - timedelta(hours=25))  # it closed
    response = client.post(f"/app/leads/{lead.pk}/reply", {"body": "Hi!", "token": str(uuid.uuid4()), "mode": offered}, follow=True)
    assert "window closed" in response.content.decode() and not Message.objects.filter(sent_by=ana).exists()


def test_a_form_token_sent_again_with_another_text_is_refused_not_silently_dropped(team_org):
    org, ana, *_ = team_org
    lead = new_lead(org, "+14155550100")
    Conversation.objects.create(organization=org, contact=lead.contact, channel=Channel.WHATSAPP, last_inbound_at=timezone.now())
    client, token = login(ana), str(uuid.uuid4())
    client.post(f"/app/leads/{lead.pk}/reply", {"body": "First text", "token": token})
    response = client.post(f"/app/leads/{lead.pk}/reply", {"body": "Edited text", "token": token}, follow=True)
    assert "already sent with another message" in response.content.decode()
    assert list(Message.objects.filter(sent_by=ana).values_list("body", flat=True)) == ["First text"]


def test_rep_pages_are_never_cached_show_local_times_and_a_logged_out_poll_gets_401(team_org):
    org, ana, *_ = team_org
    org.timezone = "America/New_York"
    org.save()
    lead = new_lead(org, "+14155550100")
    response = login(ana).get(f"/app/leads/{lead.pk}")
    assert "no-store" in response["Cache-Control"] and "private" in response["Cache-Control"]
    assert "times in America/New_York" in response.content.decode()
    assert Client().get(f"/app/leads/{lead.pk}/live", HTTP_X_REQUESTED_WITH="fetch").status_code == 401
    assert Client().get(f"/app/leads/{lead.pk}/live").status_code == 302  # a browser's own request: the login page


def test_a_rep_message_whose_retry_was_lost_is_found_by_the_sweep(team_org, settings):
    from conversations import rep_messages

    org, ana, *_ = team_org
    lead = new_lead(org, "+14155550100")
    Conversation.objects.create(organization=org, contact=lead.contact, channel=Channel.WHATSAPP, last_inbound_at=timezone.now())
    login(ana).post(f"/app/leads/{lead.pk}/reply", {"body": "Hi", "token": str(uuid.uuid4())})
    message = Message.objects.get(sent_by=ana)
    # An attempt failed transiently (back to QUEUED) and the task that was to retry it is gone.
    Message.objects.filter(pk=message.pk).update(attempts=1, sending_at=timezone.now() - timedelta(seconds=30))
    assert rep_messages.never_published() == []  # its retry may still come
    later = timezone.now() + timedelta(seconds=settings.SEND_RETRY_BACKOFF_MAX_SECONDS * 2 + 61)
    assert rep_messages.never_published(now=later) == [message.pk]


def test_outside_the_window_the_reply_goes_as_the_template(team_org):
    org, ana, *_ = team_org
    lead = new_lead(org, "+14155550100")
    page = login(ana).get(f"/app/leads/{lead.pk}").content.decode()
    assert "window is closed" in page and "lead_greeting" in page
    login(ana).post(f"/app/leads/{lead.pk}/reply", {"body": "Still interested?", "token": str(uuid.uuid4())})
    message = Message.objects.get(sent_by=ana)
    assert (message.template_name, message.body) == ("lead_greeting", "Still interested?")


def test_no_reply_to_a_contact_without_consent(team_org):
    org, ana, *_ = team_org
    lead = new_lead(org, "+14155550100", consent=False)
    client = login(ana)
    assert "opted out" in client.get(f"/app/leads/{lead.pk}").content.decode()
    response = client.post(f"/app/leads/{lead.pk}/reply", {"body": "Hello", "token": str(uuid.uuid4())}, follow=True)
    assert "opted out" in response.content.decode()
    assert not Message.objects.filter(sent_by=ana).exists()


def test_status_change_is_recorded_and_published_and_closed_leads_stay_closed(team_org):
    org, ana, *_ = team_org
    lead = new_lead(org, "+14155550100")
    client = login(ana)
    client.post(f"/app/leads/{lead.pk}/status", {"status": "won"})
    lead.refresh_from_db()
    assert lead.status == "won" and lead.closed_at is not None
    assert LeadEvent.objects.get(lead=lead, kind="lead.status_changed").data.items() >= {"from": "new", "to": "won", "by": "Ana"}.items()
    assert OutboxEvent.objects.filter(event_type="lead.status_changed", payload__lead_id=lead.pk).count() == 1
    response = client.post(f"/app/leads/{lead.pk}/status", {"status": "engaged"}, follow=True)
    assert "closed leads stay closed" in response.content.decode()
    assert Lead.objects.get(pk=lead.pk).status == "won"


def test_live_updates_answer_204_until_something_changes(team_org):
    org, ana, *_ = team_org
    lead = new_lead(org, "+14155550100")
    client = login(ana)
    first = client.get(f"/app/leads/{lead.pk}/live")
    version = first["X-Version"]
    assert client.get(f"/app/leads/{lead.pk}/live", {"v": version}).status_code == 204
    conversation = Conversation.objects.create(organization=org, contact=lead.contact, channel=Channel.WHATSAPP)
    Message.objects.create(
        organization=org, conversation=conversation, lead=lead, direction="inbound", channel="whatsapp",
        body="Is it still available?", status="received", provider_message_id="wamid.in1",
    )
    changed = client.get(f"/app/leads/{lead.pk}/live", {"v": version})
    assert changed.status_code == 200 and "Is it still available?" in changed.content.decode()
    assert changed["X-Version"] != version


# --- The tenancy line: ids edited in URLs ------------------------------------------------


@pytest.mark.parametrize("path", ["/app/leads/{id}", "/app/leads/{id}/live"])
def test_another_organizations_lead_does_not_exist_for_a_rep(team_org, path):
    _, ana, *_ = team_org
    other, _ = org_with_key()
    theirs = new_lead(other, "+14155550199")
    assert login(ana).get(path.format(id=theirs.pk)).status_code == 404


@pytest.mark.parametrize("action, data", [("reply", {"body": "hi", "token": str(uuid.uuid4())}), ("status", {"status": "lost"})])
def test_a_rep_cannot_act_on_another_organizations_lead(team_org, action, data):
    _, ana, *_ = team_org
    other, _ = org_with_key()
    theirs = new_lead(other, "+14155550199")
    assert login(ana).post(f"/app/leads/{theirs.pk}/{action}", data).status_code == 404
    assert Lead.objects.get(pk=theirs.pk).status == "new" and not Message.objects.exists()


def test_private_leads_hide_colleagues_leads_but_not_from_managers(team_org):
    org, ana, ben, boss = team_org
    org.reps_see_only_own_leads = True
    org.save()
    new_lead(org, "+14155550100")  # ana's
    bens = new_lead(org, "+14155550101", name="Bens Lead")
    assert login(ana).get(f"/app/leads/{bens.pk}").status_code == 404
    assert "Bens Lead" not in login(ana).get("/app/leads/?scope=all").content.decode()
    assert login(boss).get(f"/app/leads/{bens.pk}").status_code == 200
    assert "Bens Lead" in login(boss).get("/app/leads/?scope=all").content.decode()


def test_notifications_list_and_mark_read(team_org):
    org, ana, *_ = team_org
    lead = new_lead(org, "+14155550100")
    client = login(ana)
    assert 'aria-label="1 unread"' in client.get("/app/leads/").content.decode()
    page = client.get("/app/notifications/").content.decode()
    assert f"/app/leads/{lead.pk}" in page and "New lead: Ana Lima" in page
    assert "unread" not in client.get("/app/leads/").content.decode().split("<main>")[0]


def test_escalated_lead_moves_to_the_new_owners_list(team_org):
    org, ana, ben, _ = team_org
    org.escalation_minutes = 1
    org.save()
    lead = new_lead(org, "+14155550100", name="Moving Lead")
    from routing.services import escalate_due

    escalate_due(now=timezone.now() + timedelta(minutes=2))
    assert "Moving Lead" in login(ben).get("/app/leads/").content.decode()
    assert "Moving Lead" not in login(ana).get("/app/leads/").content.decode()
    assert Assignment.objects.get(lead=lead).rep == ben


def test_make_up_demo_gives_a_login_that_opens_the_rep_pages(capsys):
    from django.core.management import call_command

    for _ in range(2):  # `make up` runs it every time
        call_command("demo_organization")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("swx_")  # the API key stays alone on the last line
    password = next(line for line in reversed(lines) if "log in as demo / " in line).rsplit(" ", 1)[-1]
    client = Client()
    assert client.login(username="demo", password=password)
    assert client.get("/app/leads/").status_code == 200
    org = Organization.objects.get(name="Demo")
    assert org.fallback_owner.user.username == "demo"


def test_the_api_shows_who_holds_the_lead(team_org):
    org, ana, *_ = team_org
    _, key = ApiKey.issue(org)
    lead = new_lead(org, "+14155550100")
    body = Client(HTTP_AUTHORIZATION=f"Bearer {key}").get(f"/api/v1/leads/{lead.pk}").json()
    assert body["assignment"]["rep"] == "Ana" and body["assignment"]["team"] == "Sales"
