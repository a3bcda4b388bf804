"""Provider webhooks: signatures, tenants, and statuses applied once and in the right order."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.utils import timezone

from conversations import receipts
from conversations.models import Conversation, Greeting, Message, StatusReceipt, WebhookDelivery
from conversations.providers import twilio
from leads.models import Contact, Lead, LeadEvent
from swiftex import redis as swx_redis
from swiftex.models import OutboxEvent
from tests.factories import PROVIDER_CREDENTIALS, org_with_providers

pytestmark = pytest.mark.django_db

PNID = PROVIDER_CREDENTIALS["whatsapp_phone_number_id"]
APP_SECRET = PROVIDER_CREDENTIALS["whatsapp_app_secret"]
SID = PROVIDER_CREDENTIALS["twilio_account_sid"]
AUTH_TOKEN = PROVIDER_CREDENTIALS["twilio_auth_token"]


@pytest.fixture
def org():
    return org_with_providers()[0]


@pytest.fixture
def greeting_message(org):
    """A greeting accepted by WhatsApp, as the first-touch lane leaves it."""
    contact = Contact.objects.create(organization=org, name="Ana", phone="+14155550123", consent=True)
    lead = Lead.objects.create(organization=org, contact=contact, source="web", captured_at=timezone.now())
    conversation = Conversation.objects.create(organization=org, contact=contact, channel="whatsapp")
    greeting = Greeting.objects.create(organization=org, lead=lead, text="Hi Ana", text_source="template")
    return Message.objects.create(
        organization=org, conversation=conversation, lead=lead, greeting=greeting, direction="outbound", channel="whatsapp",
        body="Hi Ana", provider_message_id="wamid.A1", status="accepted", accepted_at=timezone.now(), attempts=1,
    )


def meta_payload(*, statuses=(), messages=(), contacts=(), phone_number_id=PNID) -> dict:
    value = {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id}}
    if statuses:
        value["statuses"] = list(statuses)
    if messages:
        value["messages"] = list(messages)
        value["contacts"] = list(contacts)
    return {"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}]}


def status(name: str, wamid: str = "wamid.A1", ts: int | None = None, **extra) -> dict:
    ts = ts if ts is not None else int(timezone.now().timestamp())
    return {"id": wamid, "status": name, "timestamp": str(ts), "recipient_id": "14155550123", **extra}


def post_meta(payload: dict, *, secret: str | None = APP_SECRET, signature: str | None = None, client: Client | None = None):
    raw = json.dumps(payload).encode()
    headers = {}
    if signature is not None:
        headers["HTTP_X_HUB_SIGNATURE_256"] = signature
    elif secret is not None:
        headers["HTTP_X_HUB_SIGNATURE_256"] = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    response = (client or Client()).post("/webhooks/whatsapp", data=raw, content_type="application/json", **headers)
    receipts.apply_pending()  # what the conversations lane does every half second
    return response


def message_events(lead_id: int) -> list[str]:
    return list(LeadEvent.objects.filter(lead_id=lead_id, kind__startswith="message.").values_list("kind", flat=True))


# --- WhatsApp verification and signatures -----------------------------------------


def test_meta_verification_handshake_echoes_the_challenge_for_a_known_token(org):
    response = Client().get("/webhooks/whatsapp", {"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "12345"})
    assert response.status_code == 200 and response.content == b"12345"


@pytest.mark.parametrize("params", [
    {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
    {"hub.mode": "unsubscribe", "hub.verify_token": "verify-me", "hub.challenge": "1"},
    {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"},
])
def test_meta_verification_with_a_wrong_token_or_mode_is_refused(org, params):
    assert Client().get("/webhooks/whatsapp", params).status_code == 403


@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64, "sha1=abc", ""])
def test_unsigned_or_badly_signed_whatsapp_webhooks_get_403_and_change_nothing(greeting_message, signature):
    payload = meta_payload(statuses=[status("read")])
    response = post_meta(payload, secret=None, signature=signature) if signature is not None else post_meta(payload, secret=None)
    assert response.status_code == 403
    greeting_message.refresh_from_db()
    assert greeting_message.status == "accepted" and greeting_message.read_at is None
    assert WebhookDelivery.objects.get().outcome == "rejected"


def test_a_body_signed_with_another_apps_secret_is_rejected(greeting_message):
    assert post_meta(meta_payload(statuses=[status("sent")]), secret="someone-elses-secret").status_code == 403


def test_a_non_json_body_is_rejected(org):
    assert Client().post("/webhooks/whatsapp", data=b"not json", content_type="application/json").status_code == 403


def post_raw(raw: bytes, signature: str | None = None):
    headers = {"HTTP_X_HUB_SIGNATURE_256": signature} if signature is not None else {}
    return Client().post("/webhooks/whatsapp", data=raw, content_type="application/json", **headers)


def sign(raw: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("raw", [
    b'{"entry": 5}',
    b'{"entry": [{"changes": 7}]}',
    b'{"entry": [{"changes": [{"field": "messages", "value": {"metadata": "x"}}]}]}',
    json.dumps(meta_payload(phone_number_id="\x00")).encode(),
    b"[" * 5000 + b"]" * 5000,
    b'{"entry": [], "note": "\\u0000 and a NUL byte: \x00"}',
], ids=["entry-not-a-list", "changes-not-a-list", "metadata-not-an-object", "nul-in-the-number", "deep-nesting", "nul-bytes"])
def test_a_malformed_unsigned_body_gets_403_and_no_server_error(org, raw):
    for signature in (None, "sha256=" + "0" * 64):
        assert post_raw(raw, signature).status_code == 403
    assert WebhookDelivery.objects.filter(outcome="rejected").count() == 2


def test_an_unsigned_delivery_reads_no_tenant_and_many_numbers_are_refused_unread(org):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    raw = json.dumps(meta_payload(statuses=[status("read")])).encode()
    with CaptureQueriesContext(connection) as queries:
        assert post_raw(raw).status_code == 403  # no signature header: refused before any lookup
    assert not [q for q in queries if "leads_organization" in q["sql"]]

    many = {"entry": [{"changes": [{"field": "messages", "value": {"metadata": {"phone_number_id": str(10**9 + n)}}}]} for n in range(500)]}
    raw = json.dumps(many).encode()
    with CaptureQueriesContext(connection) as queries:
        assert post_raw(raw, "sha256=" + "0" * 64).status_code == 403
    assert not [q for q in queries if "leads_organization" in q["sql"]]


def test_a_rejected_delivery_keeps_only_the_start_of_its_body(org):
    post_raw(b'{"x": "' + b"a" * 50_000 + b'"}')
    assert len(WebhookDelivery.objects.get().body) == 2_000


# --- Statuses ---------------------------------------------------------------------


def test_statuses_in_order_end_read_with_every_moment_on_the_timeline(greeting_message):
    for name in ("sent", "delivered", "read"):
        assert post_meta(meta_payload(statuses=[status(name)])).status_code == 200
    greeting_message.refresh_from_db()
    assert greeting_message.status == "read"
    assert greeting_message.sent_at < greeting_message.delivered_at < greeting_message.read_at
    assert message_events(greeting_message.lead_id) == ["message.sent", "message.delivered", "message.read"]


def test_the_same_receipt_twice_and_read_before_delivered_leave_one_correct_state(greeting_message):
    for name in ("read", "read", "delivered", "sent", "delivered"):
        assert post_meta(meta_payload(statuses=[status(name)])).status_code == 200
    greeting_message.refresh_from_db()
    assert greeting_message.status == "read"
    assert greeting_message.delivered_at and greeting_message.sent_at  # late receipts still fill their moment
    assert sorted(message_events(greeting_message.lead_id)) == ["message.delivered", "message.read", "message.sent"]


def test_duplicates_are_still_applied_once_when_redis_is_down(greeting_message):
    swx_redis.breaker.trip(ConnectionError("test: redis down"))
    for _ in range(3):
        assert post_meta(meta_payload(statuses=[status("delivered")])).status_code == 200
    assert message_events(greeting_message.lead_id) == ["message.delivered"]


def test_every_entry_change_and_status_in_one_payload_is_processed(greeting_message, org):
    other = Message.objects.create(
        organization=org, conversation=greeting_message.conversation, direction="outbound", channel="whatsapp",
        provider_message_id="wamid.B2", status="accepted",
    )
    payload = meta_payload(statuses=[status("delivered")])
    payload["entry"].append(meta_payload(statuses=[status("sent", "wamid.B2"), status("delivered", "wamid.B2")])["entry"][0])
    assert post_meta(payload).status_code == 200
    greeting_message.refresh_from_db(), other.refresh_from_db()
    assert (greeting_message.status, other.status) == ("delivered", "delivered")


def test_a_status_for_a_message_whose_wamid_we_never_stored_is_matched_by_our_callback_data(greeting_message):
    # A worker killed after Meta accepted but before storing the wamid.
    Message.objects.filter(pk=greeting_message.pk).update(provider_message_id=None, status="sending", accepted_at=None)
    Lead.objects.filter(pk=greeting_message.lead_id).update(first_response_at=None)
    payload = meta_payload(statuses=[status("sent", "wamid.LATE", biz_opaque_callback_data=f"swx-msg-{greeting_message.pk}")])
    assert post_meta(payload).status_code == 200
    greeting_message.refresh_from_db()
    assert (greeting_message.provider_message_id, greeting_message.status) == ("wamid.LATE", "sent")
    assert Lead.objects.get(pk=greeting_message.lead_id).first_response_at is not None


def test_a_failed_status_fails_the_message_once_and_raises_message_failed_for_the_sms_fallback(greeting_message):
    error = {"code": 131026, "title": "Message undeliverable", "error_data": {"details": "Message Undeliverable."}}
    for _ in range(2):
        assert post_meta(meta_payload(statuses=[status("failed", errors=[error])])).status_code == 200
    greeting_message.refresh_from_db()
    assert (greeting_message.status, greeting_message.error_code) == ("failed", "131026")
    assert "undeliverable" in greeting_message.error_title.lower()
    event = OutboxEvent.objects.get(event_type="message.failed")
    assert event.payload["greeting_id"] == greeting_message.greeting_id and event.payload["channel"] == "whatsapp"


def test_failed_after_delivered_does_not_undo_the_delivery(greeting_message):
    post_meta(meta_payload(statuses=[status("delivered")]))
    post_meta(meta_payload(statuses=[status("failed", errors=[{"code": 131000, "title": "x"}])]))
    greeting_message.refresh_from_db()
    assert greeting_message.status == "delivered"
    assert not OutboxEvent.objects.filter(event_type="message.failed").exists()


def test_statuses_for_an_unknown_phone_number_id_change_nothing(greeting_message, settings):
    settings.WHATSAPP_APP_SECRET = APP_SECRET  # the platform's default app
    assert post_meta(meta_payload(statuses=[status("read")], phone_number_id="999")).status_code == 200
    greeting_message.refresh_from_db()
    assert greeting_message.status == "accepted"


def test_a_delivery_that_fails_while_processing_is_kept_and_answered_500_so_meta_retries(greeting_message, monkeypatch):
    def broken(org, reports):
        raise RuntimeError("database went away")

    monkeypatch.setattr("conversations.receipts.enqueue", broken)
    response = post_meta(meta_payload(statuses=[status("read")]), client=Client(raise_request_exception=False))
    assert response.status_code == 500
    delivery = WebhookDelivery.objects.get()
    assert delivery.outcome == "failed" and "database went away" in delivery.detail and '"read"' in delivery.body


def test_processed_webhooks_leave_no_audit_row_but_are_counted(greeting_message):
    assert post_meta(meta_payload(statuses=[status("sent")])).status_code == 200
    assert not WebhookDelivery.objects.exists()
    assert 'swiftex_webhooks_total{outcome="processed",provider="whatsapp"}' in Client().get("/metrics").content.decode()


def test_statuses_are_stored_by_the_webhook_and_applied_in_a_batch_later(greeting_message):
    raw = json.dumps(meta_payload(statuses=[status("sent"), status("delivered")])).encode()
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert Client().post("/webhooks/whatsapp", data=raw, content_type="application/json", HTTP_X_HUB_SIGNATURE_256=signature).status_code == 200
    greeting_message.refresh_from_db()
    assert greeting_message.status == "accepted" and StatusReceipt.objects.count() == 2  # answered before applying

    assert receipts.apply_pending() == 2
    greeting_message.refresh_from_db()
    assert greeting_message.status == "delivered" and not StatusReceipt.objects.exists()


def test_a_status_that_cannot_be_applied_is_recorded_and_does_not_block_the_others(greeting_message, org, monkeypatch):
    other = Message.objects.create(
        organization=org, conversation=greeting_message.conversation, direction="outbound", channel="whatsapp",
        provider_message_id="wamid.B2", status="accepted",
    )
    real_apply = receipts._apply

    def flaky(org, report):
        if report.provider_message_id == "wamid.B2":
            raise ValueError("unexpected shape")
        return real_apply(org, report)

    monkeypatch.setattr(receipts, "_apply", flaky)
    post_meta(meta_payload(statuses=[status("sent"), status("sent", "wamid.B2"), status("delivered")]))
    greeting_message.refresh_from_db(), other.refresh_from_db()
    assert (greeting_message.status, other.status) == ("delivered", "accepted")
    assert WebhookDelivery.objects.get().outcome == "failed" and not StatusReceipt.objects.exists()


# --- Inbound ----------------------------------------------------------------------


def test_a_receipt_redelivered_long_after_keeps_the_providers_time(greeting_message):
    hours_ago = int(timezone.now().timestamp()) - 3 * 3600
    post_meta(meta_payload(statuses=[status("delivered", ts=hours_ago)]))
    greeting_message.refresh_from_db()
    assert int(greeting_message.delivered_at.timestamp()) == hours_ago


def test_an_inbound_whatsapp_message_is_stored_once_and_opens_the_24_hour_window(greeting_message):
    inbound = {"from": "14155550123", "id": "wamid.IN1", "timestamp": str(int(timezone.now().timestamp())), "type": "text", "text": {"body": "hi!"}}
    payload = meta_payload(messages=[inbound], contacts=[{"wa_id": "14155550123", "profile": {"name": "Ana"}}])
    assert post_meta(payload).status_code == 200
    assert post_meta(payload).status_code == 200
    stored = Message.objects.get(provider_message_id="wamid.IN1")
    assert (stored.direction, stored.body, stored.lead_id) == ("inbound", "hi!", greeting_message.lead_id)
    assert Conversation.objects.get(pk=greeting_message.conversation_id).window_open()
    assert message_events(greeting_message.lead_id) == ["message.received"]


# --- Twilio -------------------------------------------------------------------------


def post_twilio(path: str, params: dict, *, token: str | None = AUTH_TOKEN):
    url = "http://testserver" + path
    headers = {"HTTP_X_TWILIO_SIGNATURE": twilio.signature(token, url, params)} if token else {}
    response = Client().post(path, data=urlencode(params), content_type="application/x-www-form-urlencoded", **headers)
    receipts.apply_pending()
    return response


@pytest.fixture
def sms_message(greeting_message):
    conversation = Conversation.objects.create(organization=greeting_message.organization, contact=greeting_message.conversation.contact, channel="sms")
    return Message.objects.create(
        organization=greeting_message.organization, conversation=conversation, lead=greeting_message.lead, greeting=greeting_message.greeting,
        direction="outbound", channel="sms", body="Hi Ana", status="sending", attempts=1,
    )


def test_twilio_signature_matches_twilios_published_example():
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234", "From": "+14158675309", "To": "+18005551212"}
    assert twilio.signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_a_signed_twilio_status_callback_is_applied_and_matched_by_our_message_id(sms_message):
    params = {"MessageSid": "SM" + "b" * 32, "MessageStatus": "delivered", "AccountSid": SID, "To": "+14155550123"}
    assert post_twilio(f"/webhooks/twilio/status?m={sms_message.pk}", params).status_code == 204
    sms_message.refresh_from_db()
    assert (sms_message.status, sms_message.provider_message_id) == ("delivered", "SM" + "b" * 32)


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_unsigned_twilio_callbacks_get_403_and_change_nothing(sms_message, token):
    params = {"MessageSid": "SM" + "b" * 32, "MessageStatus": "delivered", "AccountSid": SID}
    assert post_twilio(f"/webhooks/twilio/status?m={sms_message.pk}", params, token=token).status_code == 403
    sms_message.refresh_from_db()
    assert sms_message.status == "sending"


def test_a_failed_sms_marks_the_greeting_failed(sms_message):
    params = {"MessageSid": "SM" + "c" * 32, "MessageStatus": "undelivered", "ErrorCode": "30003", "AccountSid": SID}
    post_twilio(f"/webhooks/twilio/status?m={sms_message.pk}", params)
    sms_message.refresh_from_db()
    assert (sms_message.status, sms_message.error_code) == ("failed", "30003")
    assert Greeting.objects.get(pk=sms_message.greeting_id).state == "failed"


def test_an_inbound_stop_by_sms_opts_the_contact_out(greeting_message):
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "From": "+14155550123", "To": "+15550002222", "Body": "STOP", "AccountSid": SID}
    response = post_twilio("/webhooks/twilio/inbound", params)
    assert response.status_code == 200 and b"<Response>" in response.content
    assert Contact.objects.get(phone="+14155550123").consent is False
    assert LeadEvent.objects.filter(lead_id=greeting_message.lead_id, kind="consent.revoked").exists()


def test_signed_statuses_with_odd_shapes_are_applied_or_skipped_never_a_server_error(greeting_message):
    """Meta retries a delivery answered 500 for days: one odd item must not block the rest."""
    odd = [
        status("failed", wamid="wamid.OTHER", errors=[{"code": 131026, "title": "Undeliverable", "error_data": "not an object"}]),
        status("failed", wamid="wamid.OTHER2", errors="not a list"),
        status("sent", wamid="w" * 500),  # not an id of ours
        status("delivered", wamid="wamid.\x00"),
        status("read"),
    ]
    assert post_meta(meta_payload(statuses=odd)).status_code == 200
    greeting_message.refresh_from_db()
    assert greeting_message.status == "read"


def test_an_image_captioned_stop_opts_the_contact_out(greeting_message):
    message = {"from": "14155550123", "id": "wamid.IMG1", "timestamp": str(int(timezone.now().timestamp())), "type": "image",
               "image": {"caption": "STOP", "mime_type": "image/jpeg", "id": "media-1"}}
    assert post_meta(meta_payload(messages=[message], contacts=[{"wa_id": "14155550123", "profile": {"name": "Ana"}}])).status_code == 200
    assert Contact.objects.get(phone="+14155550123").consent is False


def test_a_reaction_is_on_the_timeline_but_is_not_a_reply(greeting_message):
    """A thumbs-up is not the lead writing back: no inbound message, no AI reply, follow-ups go on."""
    now = str(int(timezone.now().timestamp()))
    reaction = {"from": "14155550123", "id": "wamid.R1", "timestamp": now, "type": "reaction",
                "reaction": {"message_id": "wamid.A1", "emoji": "\U0001f44d"}}
    unsupported = {"from": "14155550123", "id": "wamid.U1", "timestamp": now, "type": "unsupported",
                   "errors": [{"code": 131051, "title": "Message type unknown"}]}
    assert post_meta(meta_payload(messages=[reaction, unsupported], contacts=[{"wa_id": "14155550123"}])).status_code == 200
    assert not Message.objects.filter(direction="inbound").exists()
    assert not OutboxEvent.objects.filter(event_type="message.received").exists()
    events = LeadEvent.objects.filter(lead_id=greeting_message.lead_id, kind__in=["message.reaction", "message.unsupported"])
    assert sorted((e.kind, e.data.get("emoji", e.data.get("type"))) for e in events) == [
        ("message.reaction", "\U0001f44d"), ("message.unsupported", "unsupported")]
    assert not Conversation.objects.get(pk=greeting_message.conversation_id).window_open()


@pytest.mark.parametrize("submitted, whatsapp_from", [
    ("+5511987654321", "551187654321"),  # Brazil: the lead typed the ninth digit, WhatsApp writes the number without it
    ("+551187654321", "5511987654321"),  # and the other way round
    ("+525512345678", "5215512345678"),  # Mexico: "1" after 52
])
def test_a_reply_from_the_other_way_whatsapp_writes_a_number_reaches_the_same_contact(org, submitted, whatsapp_from):
    contact = Contact.objects.create(organization=org, name="Bia", phone=submitted, consent=True)
    lead = Lead.objects.create(organization=org, contact=contact, source="web", captured_at=timezone.now())
    message = {"from": whatsapp_from, "id": f"wamid.{whatsapp_from}", "timestamp": str(int(timezone.now().timestamp())),
               "type": "text", "text": {"body": "PARAR"}}
    assert post_meta(meta_payload(messages=[message], contacts=[{"wa_id": whatsapp_from}])).status_code == 200
    assert Contact.objects.filter(organization=org).count() == 1  # no stranger created
    contact.refresh_from_db()
    assert contact.consent is False  # the STOP word in Portuguese reached the lead's contact
    assert Message.objects.get(direction="inbound").lead_id == lead.pk


@pytest.mark.parametrize("params", [
    {"AccountSid": "AC\x00", "MessageSid": "SM1", "MessageStatus": "delivered"},
    {"AccountSid": "not-a-sid", "MessageSid": "SM1", "MessageStatus": "delivered"},
])
def test_a_twilio_callback_with_a_malformed_account_sid_gets_403(sms_message, params):
    assert post_twilio(f"/webhooks/twilio/status?m={sms_message.pk}", params).status_code == 403


def test_a_twilio_callback_for_a_shared_account_from_a_number_no_organization_has_is_refused(sms_message):
    from tests.factories import org_with_providers

    org_with_providers(twilio_from_number="+15559998888")
    params = {"MessageSid": "SM" + "e" * 32, "MessageStatus": "delivered", "AccountSid": SID, "From": "+15550007777", "To": "+14155550123"}
    assert post_twilio(f"/webhooks/twilio/status?m={sms_message.pk}", params).status_code == 403
    sms_message.refresh_from_db()
    assert sms_message.status == "sending"


def test_twilio_signatures_are_accepted_with_or_without_the_default_port(sms_message, settings):
    settings.PUBLIC_BASE_URL = "https://swiftex.example.com"
    path = f"/webhooks/twilio/status?m={sms_message.pk}"
    params = {"MessageSid": "SM" + "f" * 32, "MessageStatus": "delivered", "AccountSid": SID}
    signed = twilio.signature(AUTH_TOKEN, "https://swiftex.example.com:443" + path, params)
    response = Client().post(path, data=urlencode(params), content_type="application/x-www-form-urlencoded", HTTP_X_TWILIO_SIGNATURE=signed)
    assert response.status_code == 204


def test_a_verification_token_with_a_nul_byte_is_refused_not_a_server_error(org):
    params = {"hub.mode": "subscribe", "hub.verify_token": "\x00", "hub.challenge": "1"}
    assert Client().get("/webhooks/whatsapp", params).status_code == 403


def test_a_non_ascii_signature_is_refused_not_a_server_error(greeting_message):
    assert post_meta(meta_payload(statuses=[status("read")]), signature="sha256=é" * 3).status_code == 403


def test_twilio_status_callbacks_for_a_shared_account_reach_the_organization_whose_number_sent_it(sms_message):
    from tests.factories import org_with_providers

    org_with_providers(twilio_from_number="+15559998888")  # another organization on the same Twilio account, created later
    params = {"MessageSid": "SM" + "d" * 32, "MessageStatus": "delivered", "AccountSid": SID, "From": "+15550002222", "To": "+14155550123"}
    post_twilio(f"/webhooks/twilio/status?m={sms_message.pk}", params)
    sms_message.refresh_from_db()
    assert sms_message.status == "delivered"
