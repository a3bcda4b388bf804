"""Meta Lead Ads: the signed leadgen webhook, the Graph fetch from the fake server, mapping and
consent, retries, reconciliation, admin; and end to end through real processes to a greeting.

The in-process tests run the first-touch lane's service (`services.fetch_and_ingest`) the way
tests/test_webhooks.py runs `receipts.apply_pending`; the end-to-end tests at the bottom use
real web, relay and lane processes (tests.support.Stack) and the fake server's own webhook.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import time
import urllib.request
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from conversations.models import Message, WebhookDelivery
from leads.models import Contact, Lead, LeadEvent, Submission
from metaleads import graph, reconcile, services
from metaleads.models import MetaLeadForm, MetaLeadgen, MetaPage
from tests.factories import org_with_key, org_with_providers
from tests.support import FakeProviders, Stack, wait_until

APP_SECRET = "test-meta-app-secret"
PAGE_ID = "1122334455"
FORM_ID = "667788"
PAGE_TOKEN = "page-token-abc"
URL = "/webhooks/meta/leadgen"


def fields(**answers) -> list[dict]:
    return [{"name": name, "values": values if isinstance(values, list) else [values]} for name, values in answers.items()]


ANA = fields(full_name="Ana Silva", phone_number="+351912345678", email="Ana@Example.com", city="Lisboa")


# --- helpers: the fake Graph's control API ------------------------------------------------


def fake_call(fakes: FakeProviders, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(fakes.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"{}")


def seed(fakes: FakeProviders, field_data: list[dict], **extra) -> str:
    body = {"page_id": PAGE_ID, "form_id": FORM_ID, "field_data": field_data, "ad_id": "ad-1", "campaign_name": "Spring sale",
            **extra}
    return fake_call(fakes, "POST", "/_fake/graph/leads", body)["lead"]["id"]


def graph_errors(fakes: FakeProviders, **errors) -> None:
    fake_call(fakes, "POST", "/_fake/graph/config", {"errors": errors})


def graph_requests(fakes: FakeProviders) -> list[dict]:
    return fake_call(fakes, "GET", "/_fake/graph/requests")["requests"]


def leadgen_payload(*leadgen_ids: str, page_id: str = PAGE_ID, form_id: str = FORM_ID) -> dict:
    changes = [{"field": "leadgen", "value": {"leadgen_id": lid, "page_id": page_id, "form_id": form_id, "adgroup_id": "ag-1",
                                             "ad_id": "ad-1", "created_time": int(time.time())}} for lid in leadgen_ids]
    return {"object": "page", "entry": [{"id": page_id, "time": int(time.time()), "changes": changes}]}


def signed(raw: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def post_leadgen(payload: dict | bytes, *, signature: str | None = "valid"):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {}
    if signature == "valid":
        headers["HTTP_X_HUB_SIGNATURE_256"] = signed(raw)
    elif signature is not None:
        headers["HTTP_X_HUB_SIGNATURE_256"] = signature
    return Client().post(URL, data=raw, content_type="application/json", **headers)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def meta(settings, fakes):
    settings.META_APP_SECRET = APP_SECRET
    settings.META_VERIFY_TOKEN = "meta-verify-me"
    settings.GRAPH_API_URL = f"{fakes.url}/graph/v23.0"
    settings.META_FETCH_BACKOFF_SECONDS = 0.01
    return fakes


@pytest.fixture
def page(db):
    org, _ = org_with_key(phone_region="PT")
    return MetaPage.objects.create(organization=org, page_id=PAGE_ID, name="Acme", access_token=PAGE_TOKEN)


def row_of(leadgen_id: str) -> MetaLeadgen:
    return MetaLeadgen.objects.get(leadgen_id=leadgen_id)


def lane_runs(leadgen_id: str) -> None:
    """What the first-touch lane's fetch_lead task does with the row."""
    services.fetch_and_ingest(row_of(leadgen_id).pk)


# --- verification and signatures -------------------------------------------------------------


@pytest.mark.django_db
def test_the_verification_handshake_echoes_the_challenge_only_for_our_verify_token(meta):
    ok = Client().get(URL, {"hub.mode": "subscribe", "hub.verify_token": "meta-verify-me", "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.content == b"1158201444"
    for query in ({"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
                  {"hub.mode": "unsubscribe", "hub.verify_token": "meta-verify-me", "hub.challenge": "1"},
                  {"hub.mode": "subscribe", "hub.challenge": "1"}):
        assert Client().get(URL, query).status_code == 403


@pytest.mark.django_db
def test_an_unsigned_or_wrongly_signed_leadgen_webhook_is_403_and_leaves_only_an_audit_row(meta, page):
    payload = leadgen_payload("L-forged")
    raw = json.dumps(payload).encode()
    assert post_leadgen(payload, signature=None).status_code == 403
    assert post_leadgen(payload, signature=signed(raw, "another-secret")).status_code == 403
    assert post_leadgen(payload, signature="sha256=" + "0" * 64).status_code == 403
    assert post_leadgen(raw + b" ", signature=signed(raw)).status_code == 403  # the body was changed after signing

    assert not MetaLeadgen.objects.exists() and not MetaLeadForm.objects.exists() and not Lead.objects.exists()
    audits = WebhookDelivery.objects.filter(provider="meta_leadgen")
    assert audits.count() == 4 and {a.outcome for a in audits} == {"rejected"}
    assert "L-forged" in audits.first().body


@pytest.mark.django_db
def test_every_post_is_refused_while_the_app_secret_is_not_set(meta, page, settings):
    settings.META_APP_SECRET = ""
    response = post_leadgen(leadgen_payload("L1"), signature=signed(json.dumps(leadgen_payload("L1")).encode(), ""))
    assert response.status_code == 403 and not MetaLeadgen.objects.exists()


# --- webhook → Graph → lead ------------------------------------------------------------------


@pytest.mark.django_db
def test_a_signed_leadgen_is_recorded_before_the_answer_then_fetched_and_ingested_with_mapped_fields(
        meta, page, django_capture_on_commit_callbacks):
    leadgen_id = seed(meta, ANA, adset_id="as-1")
    with django_capture_on_commit_callbacks() as callbacks:
        response = post_leadgen(leadgen_payload(leadgen_id))
    assert response.status_code == 200
    row = row_of(leadgen_id)
    assert row.status == "pending" and row.organization_id == page.organization_id and row.form.form_id == FORM_ID
    assert len(callbacks) == 1  # fetch_lead enqueued once the row is committed

    lane_runs(leadgen_id)

    row.refresh_from_db()
    assert row.status == "ingested" and row.attempts == 1 and row.lead_id and row.meta_created_at
    lead = Lead.objects.select_related("contact").get(pk=row.lead_id)
    assert (lead.contact.name, lead.contact.phone, lead.contact.email) == ("Ana Silva", "+351912345678", "ana@example.com")
    assert (lead.source, lead.campaign) == ("meta", "Spring sale")
    assert lead.contact.consent is False  # no consent rule configured: stored, not messaged
    submission = Submission.objects.get(lead=lead)
    assert submission.external_id == leadgen_id and submission.payload["meta_lead"]["id"] == leadgen_id
    assert lead.routing["metadata"]["city"] == "Lisboa" and lead.routing["metadata"]["meta_ad_id"] == "ad-1"
    [call] = graph_requests(meta)
    assert call["path"] == f"/graph/v23.0/{leadgen_id}" and call["body"]["access_token"] == PAGE_TOKEN
    assert "field_data" in call["body"]["fields"]


@pytest.mark.django_db
def test_the_same_webhook_twice_gives_one_row_one_fetch_and_one_lead(meta, page, django_capture_on_commit_callbacks):
    leadgen_id = seed(meta, ANA)
    with django_capture_on_commit_callbacks() as callbacks:
        assert post_leadgen(leadgen_payload(leadgen_id)).status_code == 200
        assert post_leadgen(leadgen_payload(leadgen_id)).status_code == 200
    assert len(callbacks) == 1 and MetaLeadgen.objects.count() == 1
    lane_runs(leadgen_id)
    lane_runs(leadgen_id)  # a redelivered task: the row is no longer pending
    assert Lead.objects.count() == 1 and Submission.objects.count() == 1 and len(graph_requests(meta)) == 1


@pytest.mark.django_db
def test_every_entry_and_change_is_recorded_and_an_unknown_page_is_audited(meta, page):
    first, second = seed(meta, ANA), seed(meta, fields(full_name="Rui", email="rui@example.com"))
    payload = leadgen_payload(first)
    payload["entry"].append(leadgen_payload(second)["entry"][0])
    payload["entry"].append(leadgen_payload("L-elsewhere", page_id="999")["entry"][0])
    assert post_leadgen(payload).status_code == 200
    assert set(MetaLeadgen.objects.values_list("leadgen_id", flat=True)) == {first, second}
    audit = WebhookDelivery.objects.get(provider="meta_leadgen")
    assert audit.outcome == "failed" and "999" in audit.detail


@pytest.mark.django_db
def test_the_forms_mapping_and_consent_question_shape_the_lead(meta, page):
    MetaLeadForm.objects.create(
        page=page, form_id=FORM_ID, source="meta_ads", campaign="Villas",
        mapping={"mobile": "phone", "budget": "metadata.budget", "comments": "message", "favourite_colour": "ignore"},
        consent=MetaLeadForm.Consent.QUESTION, consent_question="whatsapp_ok",
    )
    leadgen_id = seed(meta, fields(first_name="Ana", last_name="Silva", mobile="912345678", budget="500k",
                                   comments="Call after 6", favourite_colour="blue", whatsapp_ok="Yes"))
    post_leadgen(leadgen_payload(leadgen_id))
    lane_runs(leadgen_id)

    lead = Lead.objects.select_related("contact").get(pk=row_of(leadgen_id).lead_id)
    assert (lead.contact.name, lead.contact.phone) == ("Ana Silva", "+351912345678")  # read in the organization's region
    assert lead.contact.consent is True and (lead.source, lead.campaign) == ("meta_ads", "Villas")
    assert Submission.objects.get(lead=lead).message == "Call after 6"
    metadata = lead.routing["metadata"]
    assert metadata["budget"] == "500k" and "favourite_colour" not in metadata and "mobile" not in metadata


@pytest.mark.django_db
def test_a_custom_disclaimer_checkbox_can_carry_the_consent(meta, page):
    MetaLeadForm.objects.create(page=page, form_id=FORM_ID, consent="question", consent_question="optin_whatsapp")
    leadgen_id = seed(meta, ANA, custom_disclaimer_responses=[{"checkbox_key": "optin_whatsapp", "is_checked": "1"}])
    post_leadgen(leadgen_payload(leadgen_id))
    lane_runs(leadgen_id)
    assert Contact.objects.get().consent is True


@pytest.mark.django_db
@pytest.mark.parametrize("answers, field", [
    (fields(full_name="No Contact", city="Porto"), "phone"),
    (fields(full_name="Bad Phone", phone_number="12"), "phone"),
])
def test_an_invalid_lead_fails_with_the_serializers_errors_and_writes_nothing(meta, page, answers, field):
    leadgen_id = seed(meta, answers)
    post_leadgen(leadgen_payload(leadgen_id))
    lane_runs(leadgen_id)
    row = row_of(leadgen_id)
    assert row.status == "failed" and row.lead_id is None
    assert field in row.errors and "invalid lead" in row.last_error
    assert not Lead.objects.exists() and not Contact.objects.exists() and not Submission.objects.exists()


@pytest.mark.django_db
def test_a_permanent_graph_error_fails_the_row_at_once_visible_in_admin_and_the_retry_action_requeues_it(
        meta, page, django_capture_on_commit_callbacks):
    leadgen_id = seed(meta, ANA)
    graph_errors(meta, **{leadgen_id: {"http": 400, "code": 190, "message": "Error validating access token: Session has expired"}})
    post_leadgen(leadgen_payload(leadgen_id))
    lane_runs(leadgen_id)
    row = row_of(leadgen_id)
    assert row.status == "failed" and row.attempts == 1 and "190" in row.last_error and "expired" in row.last_error
    assert not Lead.objects.exists()

    admin = Client()
    admin.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
    listing = admin.get("/admin/metaleads/metaleadgen/?status__exact=failed")
    assert listing.status_code == 200 and "Session has expired" in listing.content.decode()
    assert PAGE_TOKEN not in admin.get(f"/admin/metaleads/metapage/{page.pk}/change/").content.decode()

    graph_errors(meta)  # the token was renewed
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        admin.post("/admin/metaleads/metaleadgen/", {"action": "retry", "_selected_action": [row.pk]})
    assert len(callbacks) == 1 and row_of(leadgen_id).status == "pending" and row_of(leadgen_id).attempts == 0
    lane_runs(leadgen_id)
    assert row_of(leadgen_id).status == "ingested"


@pytest.mark.django_db
def test_a_transient_graph_error_is_retried_with_backoff_then_failed_when_attempts_run_out(meta, page, settings):
    settings.META_FETCH_MAX_ATTEMPTS = 3
    leadgen_id = seed(meta, ANA)
    graph_errors(meta, **{leadgen_id: {"http": 400, "code": 613, "message": "Calls to this api have exceeded the rate limit."}})
    post_leadgen(leadgen_payload(leadgen_id))
    for attempt in (1, 2):
        with pytest.raises(services.RetryLater):
            lane_runs(leadgen_id)
        row = row_of(leadgen_id)
        assert row.status == "pending" and row.attempts == attempt and "613" in row.last_error and row.lease_until is None
    lane_runs(leadgen_id)
    row = row_of(leadgen_id)
    assert row.status == "failed" and "gave up after 3 attempts" in row.last_error


def test_a_retry_after_longer_than_the_backoff_cap_is_left_to_the_sweep_not_held_in_a_worker(meta, page, monkeypatch):
    """An ETA task held unacked past RabbitMQ's consumer timeout closes the lane's channel."""
    leadgen_id = seed(meta, ANA)
    post_leadgen(leadgen_payload(leadgen_id))
    row = row_of(leadgen_id)
    row.attempts = 1
    services.retry_or_fail(row, "rate limited", retry_after=3600)  # returns: no RetryLater with an hour's countdown
    row.refresh_from_db()
    assert row.status == "pending" and (row.next_attempt_at - timezone.now()).total_seconds() > 3500


@pytest.mark.django_db
def test_graph_errors_are_told_apart_by_code():
    class Answer:
        def __init__(self, status, body):
            self.status_code, self._body, self.headers = status, body, {}

        def json(self):
            return self._body

    def verdict(status, code, **extra):
        return graph.error_from_response(Answer(status, {"error": {"message": "m", "code": code, **extra}})).permanent

    assert [verdict(400, c) for c in (1, 2, 4, 17, 32, 613)] == [False] * 6
    assert [verdict(400, c) for c in (190, 100, 10, 200)] == [True] * 4
    assert verdict(500, 999) is False and verdict(400, 999) is True and verdict(400, 999, is_transient=True) is False


# --- the sweep and reconciliation -------------------------------------------------------------


@pytest.mark.django_db
def test_the_sweep_picks_up_a_pending_row_whose_task_was_lost(meta, page):
    services.record([services.Leadgen(page=page, leadgen_id="L-lost", form_id=FORM_ID)], now=timezone.now() - timedelta(minutes=5))
    services.record([services.Leadgen(page=page, leadgen_id="L-fresh", form_id=FORM_ID)])
    assert [row_of("L-lost").pk] == services.stuck()
    assert services.stuck() == []  # marked as attempted now: not re-enqueued at every tick


@pytest.mark.django_db
def test_reconciliation_backfills_missed_webhooks_across_pages_and_moves_the_watermark(meta, page, monkeypatch, settings):
    monkeypatch.setattr(graph, "PAGE_SIZE", 2)  # several pages from a handful of leads
    form = MetaLeadForm.objects.create(page=page, form_id=FORM_ID, consent="form",
                                       created_at=timezone.now() - timedelta(hours=1))
    now = int(time.time())
    delivered = seed(meta, ANA, created_time=now - 600)
    post_leadgen(leadgen_payload(delivered))
    lane_runs(delivered)
    missed = [seed(meta, fields(full_name=f"Lead {i}", phone_number=f"+35191234567{i}"), created_time=now - 60 * i)
              for i in range(1, 5)]
    too_old = seed(meta, fields(full_name="Too old", email="old@example.com"), created_time=now - 7 * 86400)

    call_command("meta_reconcile")

    for leadgen_id in missed:
        row = row_of(leadgen_id)
        assert (row.status, row.via) == ("ingested", "reconcile") and row.lead.contact.consent is True
    assert row_of(delivered).via == "webhook" and Lead.objects.count() == 5
    assert not MetaLeadgen.objects.filter(leadgen_id=too_old).exists()  # before the watermark's window
    listing_calls = [r for r in graph_requests(meta) if r["path"].endswith("/leads")]
    assert len(listing_calls) == 3 and "after" in listing_calls[1]["body"]
    form.refresh_from_db()
    assert form.watermark >= timezone.now() - timedelta(seconds=settings.META_RECONCILE_OVERLAP_SECONDS + 5)
    assert not form.last_reconcile_error

    call_command("meta_reconcile")  # nothing new: nothing recorded twice
    assert Lead.objects.count() == 5 and MetaLeadgen.objects.count() == 5


@pytest.mark.django_db
def test_reconciliation_that_fails_midway_keeps_the_watermark_and_says_why(meta, page):
    form = MetaLeadForm.objects.create(page=page, form_id=FORM_ID)
    graph_errors(meta, **{FORM_ID: {"http": 400, "code": 190, "message": "Session has expired"}})
    with pytest.raises(CommandError, match="could not be reconciled"):
        call_command("meta_reconcile", form=[FORM_ID])
    form.refresh_from_db()
    assert form.watermark is None and "190" in form.last_reconcile_error


def seed_listing(meta, count: int) -> list[str]:
    """`count` leads of the form, one a minute apart, newest first (as Graph lists them)."""
    now = int(time.time())
    return [seed(meta, fields(full_name=f"Lead {i}", phone_number=f"+3519123{i:05d}"), created_time=now - 60 * (i + 1))
            for i in range(count)]


@pytest.mark.django_db
def test_a_listing_longer_than_one_run_goes_on_from_its_cursor_until_every_lead_is_read(meta, page, monkeypatch, settings):
    # Graph lists newest first: starting every run over would read the same newest pages for ever.
    monkeypatch.setattr(graph, "PAGE_SIZE", 2)
    monkeypatch.setattr(services, "MAX_RECONCILE_PAGES", 2)
    form = MetaLeadForm.objects.create(page=page, form_id=FORM_ID, consent="form", created_at=timezone.now() - timedelta(hours=1))
    leadgen_ids = seed_listing(meta, 9)  # 5 pages of 2

    first = reconcile.reconcile_form(form)
    form.refresh_from_db()
    assert first.more and not first.error and first.listed == 4
    assert form.watermark is None and form.reconcile_resume["after"] and form.next_reconcile_at <= timezone.now()
    assert "the next run goes on from there" in str(first)

    second = reconcile.reconcile_form(form)
    form.refresh_from_db()
    assert second.more and second.listed == 4 and second.since == first.since
    assert set(second.leadgen_ids) == set(leadgen_ids[4:8])  # the older pages, not the newest again

    third = reconcile.reconcile_form(form)
    form.refresh_from_db()
    assert not third.more and third.leadgen_ids == [leadgen_ids[8]]
    assert form.reconcile_resume is None and not form.last_reconcile_error
    assert form.watermark >= timezone.now() - timedelta(seconds=settings.META_RECONCILE_OVERLAP_SECONDS + 5)
    assert sorted(MetaLeadgen.objects.filter(status="ingested").values_list("leadgen_id", flat=True)) == sorted(leadgen_ids)
    assert Lead.objects.count() == 9


@pytest.mark.django_db
def test_a_pass_cut_short_by_an_error_keeps_its_cursor_and_a_refused_cursor_starts_the_window_over(meta, page, monkeypatch):
    monkeypatch.setattr(graph, "PAGE_SIZE", 2)
    monkeypatch.setattr(services, "MAX_RECONCILE_PAGES", 1)
    form = MetaLeadForm.objects.create(page=page, form_id=FORM_ID, consent="form", created_at=timezone.now() - timedelta(hours=1))
    leadgen_ids = seed_listing(meta, 5)
    assert reconcile.reconcile_form(form).more
    form.refresh_from_db()
    cursor = form.reconcile_resume["after"]

    graph_errors(meta, **{FORM_ID: {"http": 400, "code": 4, "message": "Application request limit reached", "times": 1}})
    throttled = reconcile.reconcile_form(form)
    form.refresh_from_db()
    assert "Graph 4" in throttled.error and form.reconcile_resume["after"] == cursor and form.watermark is None

    assert set(reconcile.reconcile_form(form).leadgen_ids) == set(leadgen_ids[2:4])  # went on from the cursor
    form.refresh_from_db()
    graph_errors(meta, **{FORM_ID: {"http": 400, "code": 100, "message": "(#100) Invalid cursor", "times": 1}})
    refused = reconcile.reconcile_form(form)
    form.refresh_from_db()
    assert "read again from its start" in refused.error and form.reconcile_resume is None

    monkeypatch.setattr(services, "MAX_RECONCILE_PAGES", 50)
    again = reconcile.reconcile_form(form)
    assert again.listed == 5 and again.leadgen_ids == [leadgen_ids[4]]  # the whole window, each lead recorded once
    form.refresh_from_db()
    assert form.reconcile_resume is None and form.watermark is not None and Lead.objects.count() == 5


@pytest.mark.django_db
def test_a_lead_that_cannot_be_ingested_does_not_stop_the_run_and_a_crash_is_shown_on_the_form(meta, page, monkeypatch):
    form = MetaLeadForm.objects.create(page=page, form_id=FORM_ID, consent="form", created_at=timezone.now() - timedelta(hours=1))
    leadgen_ids = seed_listing(meta, 3)
    real_ingest = services.ingest

    def breaks_on_the_second(row, lead):
        if row.leadgen_id == leadgen_ids[1]:
            raise RuntimeError("a bug")
        return real_ingest(row, lead)

    monkeypatch.setattr(services, "ingest", breaks_on_the_second)
    result = reconcile.reconcile_form(form)
    assert (result.ingested, result.failed, result.error) == (2, 1, "")
    broken = row_of(leadgen_ids[1])
    assert broken.status == "pending" and "RuntimeError" in broken.last_error and broken.lease_until is None  # the sweep resumes it

    monkeypatch.setattr(services, "record", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("db gone")))
    crashed = reconcile.reconcile_form(form)
    form.refresh_from_db()
    assert "stopped by ConnectionError" in crashed.error and form.last_reconcile_error == crashed.error


@pytest.mark.django_db
def test_the_command_reads_a_long_listing_to_its_end(meta, page, monkeypatch):
    monkeypatch.setattr(graph, "PAGE_SIZE", 2)
    monkeypatch.setattr(services, "MAX_RECONCILE_PAGES", 2)
    MetaLeadForm.objects.create(page=page, form_id=FORM_ID, consent="form", created_at=timezone.now() - timedelta(hours=1))
    leadgen_ids = seed_listing(meta, 7)
    out = io.StringIO()
    call_command("meta_reconcile", stdout=out)
    assert out.getvalue().count("the next run goes on from there") == 1 and out.getvalue().count("form 667788") == 2
    assert MetaLeadgen.objects.filter(status="ingested").count() == len(leadgen_ids)
    assert MetaLeadForm.objects.get().reconcile_resume is None


@pytest.mark.django_db
def test_the_mapping_is_validated_with_errors_naming_the_bad_entry(page):
    form = MetaLeadForm(page=page, form_id="1", mapping={"mobile": "telephone", "budget": "metadata.bad key"},
                        consent="question", source="Meta Ads")
    with pytest.raises(ValidationError) as caught:
        form.full_clean()
    errors = caught.value.message_dict
    assert "'mobile' → 'telephone'" in " ".join(errors["mapping"]) and len(errors["mapping"]) == 2
    assert "consent_question" in errors and "source" in errors
    MetaLeadForm(page=page, form_id="2", mapping={"mobile": "phone", "budget": "metadata.budget"}).full_clean()


@pytest.mark.django_db
def test_an_organizations_admin_sees_only_its_own_meta_pages_and_leads(page):
    from django.contrib.auth.models import Permission

    from tests.factories import make_rep

    other_org, _ = org_with_key()
    other_page = MetaPage.objects.create(organization=other_org, page_id="555", access_token="other-token")
    ours = MetaLeadgen.objects.create(organization=page.organization, page=page, leadgen_id="L-ours")
    theirs = MetaLeadgen.objects.create(organization=other_org, page=other_page, leadgen_id="L-theirs")
    manager = make_rep(page.organization, "manager", role="manager").user
    manager.is_staff = True
    manager.save()
    manager.user_permissions.set(Permission.objects.filter(content_type__app_label="metaleads", codename__startswith="view_"))
    client = Client()
    client.force_login(manager)

    listing = client.get("/admin/metaleads/metaleadgen/").content.decode()
    assert "L-ours" in listing and "L-theirs" not in listing
    assert client.get(f"/admin/metaleads/metaleadgen/{theirs.pk}/change/").status_code == 404
    assert client.get(f"/admin/metaleads/metaleadgen/{ours.pk}/change/").status_code == 200
    assert client.get(f"/admin/metaleads/metapage/{other_page.pk}/change/").status_code == 404


@pytest.mark.django_db
def test_admin_keeps_the_page_token_write_only_and_names_a_bad_mapping(page):
    admin = Client()
    admin.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
    change = f"/admin/metaleads/metapage/{page.pk}/change/"
    assert PAGE_TOKEN not in admin.get(change).content.decode()
    kept = admin.post(change, {"organization": page.organization_id, "page_id": PAGE_ID, "name": "Renamed", "access_token": "",
                               "active": "on"})
    assert kept.status_code == 302
    page.refresh_from_db()
    assert page.name == "Renamed" and page.access_token == PAGE_TOKEN  # empty input keeps the stored token

    bad = admin.post("/admin/metaleads/metaleadform/add/", {
        "page": page.pk, "form_id": "42", "source": "meta", "mapping": json.dumps({"mobile": "telephone"}),
        "consent": "none", "consent_answers": "yes",
    })
    assert bad.status_code == 200 and "&#x27;mobile&#x27; → &#x27;telephone&#x27;" in bad.content.decode()
    assert not MetaLeadForm.objects.filter(form_id="42").exists()


# --- end to end: real processes, the fake server's own signed webhook ------------------------------

E2E_TIMEOUT = 30


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, fake_providers, tmp_path_factory):
    env = {"META_FETCH_BACKOFF_SECONDS": "0.2", "META_VERIFY_TOKEN": "meta-verify-me"}
    running = Stack(fake_providers, tmp_path_factory.mktemp("meta-e2e"), env=env)
    yield running
    running.stop()


@pytest.fixture
def e2e(stack, fakes):
    fakes.configure(webhook_url=stack.url)
    org, _ = org_with_providers(phone_region="PT")
    meta_page = MetaPage.objects.create(organization=org, page_id=PAGE_ID, name="Acme", access_token=PAGE_TOKEN)
    MetaLeadForm.objects.create(page=meta_page, form_id=FORM_ID, consent="question", consent_question="whatsapp_ok")
    fake_call(fakes, "POST", "/_fake/graph/config", {"page_tokens": {PAGE_ID: PAGE_TOKEN}})
    return stack


def leadgen_webhooks(fakes: FakeProviders) -> list[dict]:
    return [w for w in fake_call(fakes, "GET", "/_fake/webhooks")["webhooks"] if w["provider"] == "meta_leadgen"]


def ingested(leadgen_id: str) -> MetaLeadgen | None:
    return MetaLeadgen.objects.filter(leadgen_id=leadgen_id, status="ingested").first()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_meta_lead_goes_from_metas_signed_webhook_through_the_graph_fetch_to_a_whatsapp_greeting(e2e):
    leadgen_id = seed(e2e.fakes, fields(full_name="Ana Silva", phone_number="+351912345679", whatsapp_ok="yes"), webhook=True)

    row = wait_until(lambda: ingested(leadgen_id), timeout=E2E_TIMEOUT, what="the Meta lead to be ingested")
    accepted = wait_until(lambda: Message.objects.filter(lead_id=row.lead_id, status__in=["accepted", "sent", "delivered", "read"]).first(),
                          timeout=E2E_TIMEOUT, what="the greeting to be accepted by WhatsApp")
    assert accepted.channel == "whatsapp"
    sends = [r for r in e2e.fakes.requests("whatsapp") if r["body"].get("to") == "351912345679" and r["status"] == 200]
    assert len(sends) == 1
    kinds = list(LeadEvent.objects.filter(lead_id=row.lead_id).values_list("kind", flat=True))
    assert kinds.count("lead.created") == 1 and "message.accepted" in kinds
    assert Lead.objects.get(pk=row.lead_id).source == "meta" and row.via == "webhook"

    fake_call(e2e.fakes, "POST", f"/_fake/graph/leads/{leadgen_id}/webhook")  # Meta redelivers it
    wait_until(lambda: [w["ok"] for w in leadgen_webhooks(e2e.fakes)] == [True, True], timeout=E2E_TIMEOUT,
               what="the redelivered webhook to be answered 200")
    assert MetaLeadgen.objects.count() == 1 and Lead.objects.count() == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_transient_graph_error_is_retried_by_the_lanes_task_until_the_lead_is_fetched(e2e):
    leadgen_id = "9001"
    graph_errors(e2e.fakes, **{leadgen_id: {"http": 500, "code": 2, "message": "Service temporarily unavailable",
                                            "is_transient": True, "times": 2}})
    seed(e2e.fakes, fields(full_name="Rui Costa", email="rui@example.com"), id=leadgen_id, webhook=True)

    row = wait_until(lambda: ingested(leadgen_id), timeout=E2E_TIMEOUT, what="the retried fetch")
    assert row.attempts == 3 and row.lead.contact.email == "rui@example.com"
    fetches = [r for r in graph_requests(e2e.fakes) if r["path"].endswith(f"/{leadgen_id}")]
    assert [r["status"] for r in fetches] == [500, 500, 200]
