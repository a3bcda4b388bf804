"""Tenancy in admin: an organization's admin (staff, manager Rep) sees and touches only their
organization; another organization's ids in URLs, forms, filters and actions get nothing."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations.models import FollowUpSequence, FollowUpStep, ScheduledJob
from crmsync.models import ContactSync
from leads.models import ApiKey, Contact, Lead, Organization, Submission
from routing.models import Assignment, Notification, Rep, RoutingRule, Team
from tests.factories import make_rep, make_team, org_with_key

pytestmark = pytest.mark.django_db

_phones = iter(range(1_000_000))


@dataclass
class World:
    """One organization with one of everything an admin can open."""

    org: Organization
    rep: Rep
    team: Team
    rule: RoutingRule
    contact: Contact
    lead: Lead
    api_key: ApiKey
    job: ScheduledJob
    sync: ContactSync


def a_lead(org: Organization, *, rep: Rep | None = None, team: Team | None = None, status: str = "new", **contact) -> Lead:
    contact = Contact.objects.create(
        organization=org, phone=contact.pop("phone", f"+1415{next(_phones):07d}"), name=contact.pop("name", "Ana Lima"),
        consent=contact.pop("consent", True), consent_at=timezone.now(), **contact,
    )
    lead = Lead.objects.create(organization=org, contact=contact, source="web", status=status, captured_at=timezone.now())
    Submission.objects.create(organization=org, contact=contact, lead=lead, source="web", payload={}, received_at=lead.captured_at,
                              opened_lead=True)
    if rep is not None:
        Assignment.objects.create(lead=lead, rep=rep, team=team, assigned_at=timezone.now())
    return lead


def world(name: str, **org_fields) -> World:
    org, _ = org_with_key(name=name, **org_fields)
    rep = make_rep(org, f"{name.lower()}-rep")
    team = make_team(org, f"{name} team", [rep])
    rule = RoutingRule.objects.create(organization=org, name=f"{name} rule", team=team)
    lead = a_lead(org, rep=rep, team=team)
    Notification.objects.create(rep=rep, lead=lead, text=f"New lead for {name}", created_at=timezone.now(), email="failed")
    api_key = ApiKey.objects.get(organization=org)
    sequence = FollowUpSequence.objects.create(organization=org, name="Nurture")
    step = FollowUpStep.objects.create(sequence=sequence, position=1, delay_minutes=60, text="Hi {first_name}")
    job = ScheduledJob.objects.create(
        organization=org, lead=lead, kind=ScheduledJob.Kind.FOLLOWUP, step=step, due_at=timezone.now(),
        status=ScheduledJob.Status.FAILED, reason="before",
    )
    sync = ContactSync.objects.create(
        organization=org, contact=lead.contact, state=ContactSync.State.DEAD, next_attempt_at=timezone.now(),
        changed_at=timezone.now(), last_error="before",
    )
    return World(org, rep, team, rule, lead.contact, lead, api_key, job, sync)


def org_admin(org: Organization, username: str) -> User:
    """A manager of `org` made its admin the documented way (manage.py make_org_admin)."""
    make_rep(org, username, role=Rep.Role.MANAGER)
    call_command("make_org_admin", username, stdout=io.StringIO())
    return User.objects.get(username=username)


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def a():
    return world("Acme")


@pytest.fixture
def b():
    return world("Globex")


@pytest.fixture
def manager_a(a) -> Client:
    return client_for(org_admin(a.org, "acme-admin"))


def objects(w: World) -> dict[str, int]:
    return {
        "leads/lead": w.lead.pk, "leads/contact": w.contact.pk, "routing/rep": w.rep.pk, "routing/team": w.team.pk,
        "routing/routingrule": w.rule.pk, "leads/organization": w.org.pk, "leads/apikey": w.api_key.pk,
        "conversations/scheduledjob": w.job.pk, "crmsync/contactsync": w.sync.pk,
    }


@pytest.mark.parametrize("page", ["change", "delete", "history"])
def test_another_organizations_object_by_id_is_not_found_on_every_page(manager_a, a, b, page):
    for model, pk in objects(b).items():
        response = manager_a.get(f"/admin/{model}/{pk}/{page}/")
        assert response.status_code in (403, 404), (model, response.status_code)
        assert b.org.name not in response.content.decode(), model
    for model, pk in objects(a).items():  # their own: open (or, where they may not delete, refused)
        expected = {200, 403} if page == "delete" else {200}
        assert manager_a.get(f"/admin/{model}/{pk}/{page}/").status_code in expected, model


def test_posting_to_another_organizations_change_and_delete_pages_changes_nothing(manager_a, b):
    assert manager_a.post(f"/admin/routing/team/{b.team.pk}/change/", {"name": "Hijacked"}).status_code == 404
    assert manager_a.post(f"/admin/routing/rep/{b.rep.pk}/delete/", {"post": "yes"}).status_code in (403, 404)
    assert manager_a.post(f"/admin/leads/organization/{b.org.pk}/change/", {"name": "Hijacked"}).status_code == 404
    b.team.refresh_from_db()
    b.org.refresh_from_db()
    assert (b.team.name, b.org.name) == ("Globex team", "Globex")
    assert Rep.objects.filter(pk=b.rep.pk).exists()


@pytest.mark.parametrize("model", [
    "leads/lead", "leads/contact", "leads/submission", "leads/apikey", "leads/organization", "routing/rep", "routing/team",
    "routing/routingrule", "routing/assignment", "routing/notification", "conversations/scheduledjob",
    "conversations/followupsequence", "crmsync/contactsync",
])
def test_lists_show_only_the_organizations_rows(manager_a, a, b, model):
    response = manager_a.get(f"/admin/{model}/")
    assert response.status_code == 200
    shown = list(response.context["cl"].result_list)
    app_label, model_name = model.split("/")
    if model_name == "organization":
        assert [o.pk for o in shown] == [a.org.pk]
    elif model_name in ("assignment",):
        assert {x.lead.organization_id for x in shown} == {a.org.pk}
    elif model_name == "notification":
        assert {x.rep.organization_id for x in shown} == {a.org.pk}
    else:
        assert shown and {x.organization_id for x in shown} == {a.org.pk}, model
    assert "Globex" not in response.content.decode()  # nor in a filter's choices


def test_filter_choices_and_dropdowns_offer_only_the_organizations_reps_and_teams(manager_a, a, b):
    for page in ("/admin/leads/lead/", "/admin/routing/assignment/", "/admin/routing/routingrule/"):
        html = manager_a.get(page).content.decode()
        assert "Acme" in html and "Globex" not in html, page
    rule_form = manager_a.get("/admin/routing/routingrule/add/").context["adminform"].form
    assert list(rule_form.fields["team"].queryset) == [a.team]
    assert list(rule_form.fields["organization"].queryset) == [a.org]
    org_form = manager_a.get(f"/admin/leads/organization/{a.org.pk}/change/").context["adminform"].form
    assert set(org_form.fields["fallback_owner"].queryset) == set(Rep.objects.filter(organization=a.org))
    found = manager_a.get("/admin/autocomplete/", {"app_label": "routing", "model_name": "teammember", "field_name": "rep", "term": ""})
    assert {int(r["id"]) for r in found.json()["results"]} == set(Rep.objects.filter(organization=a.org).values_list("pk", flat=True))


def test_a_form_naming_another_organization_or_its_team_is_refused_and_creates_nothing(manager_a, a, b):
    rule = {"organization": b.org.pk, "name": "Steal", "position": 1, "active": "on", "team": b.team.pk}
    response = manager_a.post("/admin/routing/routingrule/add/", rule)
    assert response.status_code == 200 and set(response.context["adminform"].form.errors) == {"organization", "team"}
    response = manager_a.post("/admin/leads/apikey/add/", {"organization": b.org.pk, "name": "Steal"})
    assert response.status_code == 200 and "organization" in response.context["adminform"].form.errors
    assert not RoutingRule.objects.filter(name="Steal").exists() and not ApiKey.objects.filter(name="Steal").exists()

    team = {"organization": a.org.pk, "name": "Closers", "distribution": "round_robin",
            "members-TOTAL_FORMS": "1", "members-INITIAL_FORMS": "0", "members-0-rep": b.rep.pk, "members-0-weight": "1"}
    assert manager_a.post("/admin/routing/team/add/", team).status_code == 200  # B's rep is not a choice
    assert not Team.objects.filter(name="Closers").exists()
    team["members-0-rep"] = a.rep.pk
    assert manager_a.post("/admin/routing/team/add/", team).status_code == 302
    assert Team.objects.get(name="Closers").organization == a.org


def test_actions_on_another_organizations_ids_change_nothing(manager_a, a, b):
    def act(model: str, action: str, pk: int, **extra):
        return manager_a.post(f"/admin/{model}/", {"action": action, "_selected_action": [pk], **extra}, follow=True)

    act("leads/apikey", "revoke", b.api_key.pk)
    act("conversations/scheduledjob", "retry_now", b.job.pk)
    act("crmsync/contactsync", "retry_now", b.sync.pk)
    act("leads/lead", "retry_crm_sync", b.lead.pk)
    act("leads/lead", "resend_greeting", b.lead.pk)
    act("leads/lead", "reassign", b.lead.pk, apply="yes", rep=Rep.objects.get(user__username="acme-admin").pk)
    act("routing/rep", "delete_selected", b.rep.pk, post="yes")

    b.api_key.refresh_from_db()
    b.job.refresh_from_db()
    b.sync.refresh_from_db()
    assert b.api_key.revoked_at is None
    assert (b.job.status, b.sync.state) == (ScheduledJob.Status.FAILED, ContactSync.State.DEAD)
    assert Assignment.objects.get(lead=b.lead).rep == b.rep
    assert list(b.lead.events.values_list("kind", flat=True)) == []
    assert Rep.objects.filter(pk=b.rep.pk).exists()


def test_an_organization_admin_cannot_add_or_delete_organizations(manager_a, a):
    assert manager_a.get("/admin/leads/organization/add/").status_code == 403
    assert manager_a.post(f"/admin/leads/organization/{a.org.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Organization.objects.filter(pk=a.org.pk).exists()


def test_an_organization_admin_cannot_claim_another_organizations_whatsapp_number(manager_a, a, b):
    Organization.objects.filter(pk=b.org.pk).update(whatsapp_phone_number_id="555000111")
    page = manager_a.get(f"/admin/leads/organization/{a.org.pk}/change/")
    data = {name: value for name, value in page.context["adminform"].form.initial.items()
            if name not in ("fallback_owner", "clear_secrets") and value not in (None, False)}
    data = {k: ("on" if v is True else v) for k, v in data.items()}
    response = manager_a.post(f"/admin/leads/organization/{a.org.pk}/change/", {**data, "whatsapp_phone_number_id": "555000111"})
    assert response.status_code == 200
    assert "Another organization already uses this WhatsApp phone number id" in response.content.decode()


def test_an_organization_admin_cannot_remove_a_fellow_admin(manager_a, a):
    fellow = org_admin(a.org, "acme-admin-2")
    rep = Rep.objects.get(user=fellow)
    assert manager_a.post(f"/admin/routing/rep/{rep.pk}/delete/", {"post": "yes"}).status_code == 403
    response = manager_a.post("/admin/routing/rep/", {"action": "delete_selected", "_selected_action": [rep.pk], "post": "yes"})
    assert response.status_code == 403 and Rep.objects.filter(pk=rep.pk).exists()


def test_an_organization_admin_enters_and_reads_times_in_the_organizations_time_zone():
    import datetime as dt

    org, _ = org_with_key(name="Lion", timezone="Asia/Singapore")
    rep = make_rep(org, "lion-rep")
    manager = client_for(org_admin(org, "lion-admin"))
    manager.post(f"/admin/routing/rep/{rep.pk}/change/", {
        "first_name": "Lion", "email": "", "login_enabled": "on", "new_password": "", "role": "rep", "max_open_leads": "0",
        "working_days": "1,2,3,4,5", "out_of_office_until_0": "2026-12-01", "out_of_office_until_1": "09:00:00",
    })
    rep.refresh_from_db()
    assert rep.out_of_office_until == dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.timezone.utc)  # 09:00 in Singapore
    page = manager.get(f"/admin/routing/rep/{rep.pk}/change/")
    assert 'name="out_of_office_until_1" value="09:00:00"' in page.content.decode()


def test_a_staff_user_without_a_manager_rep_sees_no_tenant_data(a):
    staff = User.objects.create_user("helpdesk", password="pw", is_staff=True)
    rep_only = make_rep(a.org, "plain-rep").user
    rep_only.is_staff = True
    rep_only.save()
    for user in (staff, rep_only):
        client = client_for(user)
        assert client.get("/admin/leads/lead/").status_code == 403
        assert client.get(f"/admin/leads/lead/{a.lead.pk}/change/").status_code in (403, 404)
        assert "Leads" not in client.get("/admin/").content.decode()


def test_superusers_see_every_organization(admin_client, a, b):
    shown = {lead.organization_id for lead in admin_client.get("/admin/leads/lead/").context["cl"].result_list}
    assert shown == {a.org.pk, b.org.pk}
    assert admin_client.get(f"/admin/routing/team/{b.team.pk}/change/").status_code == 200
    assert admin_client.get("/admin/leads/lead/999999/change/").status_code == 404  # not a redirect


def test_make_org_admin_refuses_a_user_of_another_organization(a, b):
    make_rep(b.org, "globex-person")
    with pytest.raises(Exception, match="is a rep of Globex"):
        call_command("make_org_admin", "globex-person", "--organization", str(a.org.pk))


def test_make_org_admin_revoke_takes_admin_access_away(a):
    user = org_admin(a.org, "leaving")
    call_command("make_org_admin", "leaving", "--revoke", stdout=io.StringIO())
    user.refresh_from_db()
    assert not user.is_staff and not user.groups.exists()
    assert client_for(user).get("/admin/leads/lead/").status_code == 302  # to the login page


def test_the_leads_list_costs_the_same_queries_for_3_or_30_leads(manager_a, a):
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert manager_a.get("/admin/leads/lead/").status_code == 200
        return len(queries)

    for _ in range(2):
        a_lead(a.org, rep=a.rep, team=a.team)
    few = count()
    for _ in range(27):
        a_lead(a.org, rep=a.rep, team=a.team)
    assert count() == few
    assert few <= 12, few


def test_a_rep_an_organization_admin_creates_is_in_their_organization(manager_a, a, b):
    form = {"username": "new-rep", "first_name": "New", "last_name": "Rep", "email": "", "password1": "a-long-password-1",
            "password2": "a-long-password-1", "organization": b.org.pk, "role": "rep", "max_open_leads": "0",
            "working_days": "1,2,3,4,5", "out_of_office_until_0": "", "out_of_office_until_1": ""}
    refused = manager_a.post("/admin/routing/rep/add/", form)
    assert refused.status_code == 200 and "organization" in refused.context["adminform"].form.errors
    assert manager_a.post("/admin/routing/rep/add/", {**form, "organization": a.org.pk}).status_code == 302
    rep = Rep.objects.get(user__username="new-rep")
    assert rep.organization == a.org and not rep.user.is_staff


def test_editing_another_organizations_rule_from_the_list_changes_nothing(manager_a, a, b):
    formset = {"form-TOTAL_FORMS": "1", "form-INITIAL_FORMS": "1", "form-0-id": b.rule.pk, "form-0-position": "99",
               "form-0-active": "", "_save": "Save"}
    manager_a.post("/admin/routing/routingrule/", formset)
    b.rule.refresh_from_db()
    assert (b.rule.position, b.rule.active) == (0, True)


def test_an_organization_admin_cannot_change_another_admins_login(manager_a, a):
    other_admin = org_admin(a.org, "acme-admin-2")
    rep = other_admin.rep
    page = manager_a.get(f"/admin/routing/rep/{rep.pk}/change/")
    form = page.context["adminform"].form
    assert all(form.fields[name].disabled for name in ("email", "new_password", "login_enabled", "role"))
    manager_a.post(f"/admin/routing/rep/{rep.pk}/change/", {
        "first_name": "Taken", "email": "attacker@example.com", "new_password": "attacker-password-1", "role": "rep",
        "max_open_leads": "0", "working_days": "1,2,3", "out_of_office_until_0": "", "out_of_office_until_1": "",
    })
    other_admin.refresh_from_db()
    rep.refresh_from_db()
    assert other_admin.check_password("pw") and other_admin.email == "" and rep.role == Rep.Role.MANAGER
