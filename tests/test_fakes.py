"""The fake provider server (fakes/) as a real subprocess, with a real webhook receiver.

No Django here: it also runs with `-p no:django`. Signatures are checked with this file's own
implementations, the Twilio one pinned to Twilio's published test vector.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import signal
import subprocess
import sys
import threading
import re
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qsl

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
APP_SECRET = "test-app-secret"
AUTH_TOKEN = "test-auth-token"
ACCOUNT_SID = "AC" + "1" * 32
PHONE_NUMBER_ID = "123456789012345"


class Receiver:
    """A webhook sink on loopback that records every POST and can fail the next few on purpose."""

    def __init__(self) -> None:
        self.hits: list[dict[str, Any]] = []
        self.fail_next = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    fail = receiver.fail_next > 0
                    receiver.fail_next -= fail
                    receiver.hits.append({"path": self.path, "headers": dict(self.headers), "body": body, "failed": fail})
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def clear(self) -> None:
        with self.lock:
            self.hits.clear()
            self.fail_next = 0

    def wait(self, path_prefix: str, count: int, timeout: float = 3.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            with self.lock:
                hits = [h for h in self.hits if h["path"].startswith(path_prefix) and not h["failed"]]
            return hits if len(hits) >= count else None

        return wait_for(enough, timeout, f"{count} webhooks to {path_prefix}")


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def start_fakes(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fakes", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def fake_server(receiver: Receiver) -> Iterator[str]:
    proc = start_fakes(
        "--port", "0", "--webhook-url", receiver.url,
        "--whatsapp-app-secret", APP_SECRET, "--twilio-auth-token", AUTH_TOKEN,
        "--model-latency-ms", "10", "--whatsapp-latency-ms", "10", "--sms-latency-ms", "10",
        "--status-delay-ms", "5", "--hubspot-latency-ms", "5", "--crm-webhook-latency-ms", "5",
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=10)
    except queue.Empty:
        proc.kill()
        pytest.fail("fake server did not start: " + proc.stderr.read())
    assert line.startswith("fake providers listening on http://127.0.0.1:"), (line, proc.stderr.read())
    yield line.split(" on ", 1)[1].strip()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0


@pytest.fixture
def fake(fake_server: str, receiver: Receiver) -> str:
    requests.post(f"{fake_server}/_fake/reset", timeout=5).raise_for_status()
    receiver.clear()
    return fake_server


def configure(base: str, **config: Any) -> dict[str, Any]:
    response = requests.post(f"{base}/_fake/config", json=config, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def whatsapp_send(base: str, to: str, token: str = "any-token", **extra: Any) -> requests.Response:
    body = {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "Hello"}, **extra}
    return requests.post(
        f"{base}/whatsapp/v23.0/{PHONE_NUMBER_ID}/messages",
        json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5,
    )


def statuses_of(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(h["body"])["entry"][0]["changes"][0]["value"]["statuses"][0] for h in hits]


def twilio_signature(token: str, url: str, params: dict[str, str]) -> str:
    signed = url + "".join(key + params[key] for key in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def test_our_twilio_signature_matches_twilios_published_vector() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
        "From": "+14158675309", "To": "+18005551212",
    }
    assert twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_openai_chat_completion_shape_and_name(fake: str) -> None:
    url = f"{fake}/openai/v1/chat/completions"
    messages = [
        {"role": "system", "content": "You greet leads."},
        {"role": "user", "content": "New lead\nName: Ana Lima\nPhone: +14155550123"},
    ]
    response = requests.post(url, json={"model": "gpt-4o-mini", "messages": messages, "max_tokens": 80},
                             headers={"Authorization": "Bearer sk-test"}, timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini" and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {
        "role": "assistant", "refusal": None,
        "content": "Hi Ana Lima! Thanks for reaching out — a specialist will be with you shortly.",
    }
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0

    anonymous = requests.post(url, json={"model": "m", "messages": [{"role": "user", "content": "hello"}]},
                              headers={"Authorization": "Bearer k"}, timeout=5)
    assert anonymous.json()["choices"][0]["message"]["content"].startswith("Hi there! ")

    unauthorised = requests.post(url, json={"model": "m", "messages": messages}, timeout=5)
    assert unauthorised.status_code == 401
    assert unauthorised.json()["error"]["code"] == "invalid_api_key"
    assert unauthorised.json()["error"]["type"] == "invalid_request_error"
    missing = requests.post(url, json={"model": "m"}, headers={"Authorization": "Bearer k"}, timeout=5)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"

    configure(fake, model_error_rate=1.0)
    failed = requests.post(url, json={"model": "m", "messages": messages}, headers={"Authorization": "Bearer k"}, timeout=5)
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"


def test_whatsapp_send_and_signed_status_webhooks(fake: str, receiver: Receiver) -> None:
    response = whatsapp_send(fake, "+14155550123", biz_opaque_callback_data="lead-42")
    assert response.status_code == 200
    body = response.json()
    wamid = body["messages"][0]["id"]
    assert wamid.startswith("wamid.") and body["messages"][0]["message_status"] == "accepted"
    assert body["contacts"] == [{"input": "+14155550123", "wa_id": "14155550123"}]

    hits = receiver.wait("/webhooks/whatsapp", 3)
    for hit in hits:
        expected = "sha256=" + hmac.new(APP_SECRET.encode(), hit["body"], hashlib.sha256).hexdigest()
        assert hit["headers"]["X-Hub-Signature-256"] == expected
        assert hit["headers"]["Content-Type"] == "application/json"
        payload = json.loads(hit["body"])
        assert payload["object"] == "whatsapp_business_account"
        assert payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] == PHONE_NUMBER_ID
    statuses = statuses_of(hits)
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert {s["id"] for s in statuses} == {wamid}
    assert {s["recipient_id"] for s in statuses} == {"14155550123"}
    assert {s["biz_opaque_callback_data"] for s in statuses} == {"lead-42"}
    assert all(s["timestamp"].isdigit() for s in statuses)
    assert "pricing" in statuses[0] and "conversation" in statuses[1] and "conversation" not in statuses[2]

    recorded = requests.get(f"{fake}/_fake/requests", params={"provider": "whatsapp"}, timeout=5).json()["requests"]
    assert len(recorded) == 1 and recorded[0]["status"] == 200 and recorded[0]["message_id"] == wamid
    assert recorded[0]["answered_at"] >= recorded[0]["received_at"]
    assert recorded[0]["body"]["to"] == "+14155550123"


def test_whatsapp_undeliverable_number_fails_with_131026(fake: str, receiver: Receiver) -> None:
    configure(fake, whatsapp_undeliverable=["15550009999"])
    response = whatsapp_send(fake, "15550009999")
    assert response.status_code == 200
    [failed] = statuses_of(receiver.wait("/webhooks/whatsapp", 1))
    assert failed["status"] == "failed" and failed["id"] == response.json()["messages"][0]["id"]
    assert failed["errors"][0]["code"] == 131026
    time.sleep(0.05)  # no further statuses follow a failure
    assert len(receiver.hits) == 1


def test_whatsapp_error_injection_and_validation(fake: str) -> None:
    configure(fake, whatsapp_errors={"15551234567": {"http": 400, "code": 131047, "title": "Re-engagement message"}})
    response = whatsapp_send(fake, "+15551234567")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 131047 and error["message"] == "Re-engagement message"
    assert error["error_data"]["messaging_product"] == "whatsapp" and error["fbtrace_id"]

    invalid = whatsapp_send(fake, "+15551112222", messaging_product="sms")
    assert invalid.status_code == 400
    assert invalid.json()["error"]["code"] == 100
    assert "messaging_product" in invalid.json()["error"]["error_data"]["details"]

    configure(fake, whatsapp_error_rate=1.0)
    transient = whatsapp_send(fake, "+15551112222")
    assert transient.status_code == 500 and transient.json()["error"]["is_transient"] is True


def test_whatsapp_bad_token_gives_190(fake: str) -> None:
    configure(fake, whatsapp_token="the-right-token")
    assert whatsapp_send(fake, "+15551112222", token="the-right-token").status_code == 200
    response = whatsapp_send(fake, "+15551112222", token="a-wrong-token")
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["code"], error["error_subcode"], error["type"]) == (190, 463, "OAuthException")


def test_whatsapp_status_order_flags_and_retry(fake: str, receiver: Receiver) -> None:
    configure(fake, reverse_statuses=True, duplicate_statuses=True)
    wamid = whatsapp_send(fake, "+15551112222").json()["messages"][0]["id"]

    def this_message() -> list[dict[str, Any]] | None:
        # Only this message's: a webhook of the previous test may land after the receiver was cleared.
        statuses = [s for s in statuses_of(receiver.wait("/webhooks/whatsapp", 1)) if s["id"] == wamid]
        return statuses if len(statuses) >= 6 else None

    statuses = wait_for(this_message, 6, "six statuses of the message")
    assert [s["status"] for s in statuses] == ["read", "read", "delivered", "delivered", "sent", "sent"]

    requests.post(f"{fake}/_fake/reset", timeout=5)
    receiver.clear()
    receiver.fail_next = 1  # the first attempt gets a 500, the retry succeeds
    configure(fake, whatsapp_statuses=["sent"])
    whatsapp_send(fake, "+15551112222")
    receiver.wait("/webhooks/whatsapp", 1)

    def delivered() -> list[dict[str, Any]] | None:
        answer = requests.get(f"{fake}/_fake/webhooks", timeout=5).json()
        return answer if answer["webhooks"] and answer["webhooks"][0]["ok"] else None

    answer = wait_for(delivered, 3, "the webhook record")
    assert answer["webhooks"][0]["attempts"] == 2 and answer["webhooks"][0]["status"] == 200
    assert answer["stats"] == {"attempts": 2, "delivered": 1, "gave_up": 0}

    # The retry schedule is configurable (the benchmarks space retries out like a provider does).
    requests.post(f"{fake}/_fake/reset", timeout=5)
    receiver.clear()
    receiver.fail_next = 3  # every attempt: the first and both retries
    configure(fake, whatsapp_statuses=["sent"], webhook_retry_delays_ms=[10, 10])
    whatsapp_send(fake, "+15551112222")
    answer = wait_for(lambda: (a := requests.get(f"{fake}/_fake/webhooks", timeout=5).json())["stats"]["gave_up"] and a, 3, "giving up")
    assert answer["stats"] == {"attempts": 3, "delivered": 0, "gave_up": 1}


def test_twilio_create_and_signed_status_callbacks(fake: str, receiver: Receiver) -> None:
    callback = f"{receiver.url}/webhooks/twilio/status?org=7"
    url = f"{fake}/twilio/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    form = {"To": "+14155550123", "From": "+15557654321", "Body": "Hi Ana", "StatusCallback": callback}
    response = requests.post(url, data=form, auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=5)
    assert response.status_code == 201
    message = response.json()
    assert message["sid"].startswith("SM") and len(message["sid"]) == 34
    assert (message["status"], message["to"], message["from"], message["body"]) == ("queued", "+14155550123", "+15557654321", "Hi Ana")
    assert message["account_sid"] == ACCOUNT_SID and message["error_code"] is None and message["api_version"] == "2010-04-01"

    hits = receiver.wait("/webhooks/twilio/status", 2)
    for hit in hits:
        params = dict(parse_qsl(hit["body"].decode()))
        assert hit["headers"]["X-Twilio-Signature"] == twilio_signature(AUTH_TOKEN, callback, params)
        assert params["MessageSid"] == params["SmsSid"] == message["sid"]
        assert (params["AccountSid"], params["To"], params["ApiVersion"]) == (ACCOUNT_SID, "+14155550123", "2010-04-01")
    assert [dict(parse_qsl(h["body"].decode()))["MessageStatus"] for h in hits] == ["sent", "delivered"]

    unauthorised = requests.post(url, data=form, auth=(ACCOUNT_SID, "wrong"), timeout=5)
    assert unauthorised.status_code == 401 and unauthorised.json()["code"] == 20003
    no_body = requests.post(url, data={"To": "+14155550123", "From": "+15557654321"}, auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=5)
    assert no_body.status_code == 400 and no_body.json()["code"] == 21602


def test_twilio_error_injection_and_undelivered(fake: str, receiver: Receiver) -> None:
    configure(fake, sms_errors={"+15550000001": {"http": 400, "code": 21211, "message": "Invalid 'To' Phone Number"}},
              sms_undeliverable=["+15550000002"])
    url = f"{fake}/twilio/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    rejected = requests.post(url, data={"To": "+15550000001", "From": "+1555", "Body": "x"}, auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=5)
    assert rejected.status_code == 400 and rejected.json()["code"] == 21211
    callback = f"{receiver.url}/webhooks/twilio/status"
    requests.post(url, data={"To": "+15550000002", "From": "+1555", "Body": "x", "StatusCallback": callback},
                  auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=5)
    params = [dict(parse_qsl(h["body"].decode())) for h in receiver.wait("/webhooks/twilio/status", 2)]
    assert [p["MessageStatus"] for p in params] == ["sent", "undelivered"]
    assert "ErrorCode" not in params[0] and params[1]["ErrorCode"] == "30003"


def test_config_api(fake: str) -> None:
    url = f"{fake}/_fake/config"
    unknown = requests.post(url, json={"model_latency_ms": 5, "no_such_key": 1}, timeout=5)
    assert unknown.status_code == 400 and "no_such_key" in unknown.json()["error"]
    wrong_type = requests.post(url, json={"send_webhooks": "yes"}, timeout=5)
    assert wrong_type.status_code == 400 and "send_webhooks" in wrong_type.json()["error"]
    bad_delay = requests.post(url, json={"webhook_retry_delays_ms": [100, -1]}, timeout=5)
    assert bad_delay.status_code == 400 and "webhook_retry_delays_ms[1]" in bad_delay.json()["error"]
    assert requests.get(url, timeout=5).json()["model_latency_ms"] == 10  # the rejected update changed nothing

    merged = configure(fake, sms_error_rate=0.25)
    assert merged["sms_error_rate"] == 0.25 and merged["whatsapp_app_secret"] == APP_SECRET
    requests.post(f"{fake}/_fake/reset", timeout=5)
    assert requests.get(url, timeout=5).json()["sms_error_rate"] == 0
    assert requests.get(f"{fake}/_fake/health", timeout=5).json() == {"ok": True}


def test_refuses_a_non_loopback_host() -> None:
    proc = start_fakes("--host", "0.0.0.0", "--port", "0")
    out, err = proc.communicate(timeout=10)
    assert proc.returncode != 0 and out == ""
    assert "loopback" in err


HUBSPOT_UPSERT = "/hubspot/crm/v3/objects/contacts/batch/upsert"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def hubspot_upsert(base: str, inputs: Any, token: str | None = "pat-test") -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(base + HUBSPOT_UPSERT, json={"inputs": inputs}, headers=headers, timeout=5)


def contact(email: str, trace: str | None = None, **properties: str) -> dict[str, Any]:
    item: dict[str, Any] = {"id": email, "idProperty": "email", "properties": properties}
    if trace is not None:
        item["objectWriteTraceId"] = trace
    return item


def hubspot_state(base: str) -> dict[str, Any]:
    return requests.get(f"{base}/_fake/hubspot/contacts", timeout=5).json()


def test_hubspot_upsert_creates_then_updates_the_same_contact(fake: str) -> None:
    created = hubspot_upsert(fake, [
        contact("ana@example.com", "lead-1", firstname="Ana", phone="+14155550123"),
        contact("bo@example.com", lastname="Berg"),
    ])
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["status"] == "COMPLETE" and ISO_MS.match(body["startedAt"]) and ISO_MS.match(body["completedAt"])
    ana, bo = body["results"]
    assert (ana["id"], ana["new"], ana["objectWriteTraceId"], ana["archived"]) == ("1001", True, "lead-1", False)
    assert ana["properties"]["firstname"] == "Ana" and ana["properties"]["email"] == "ana@example.com"
    assert ana["properties"]["hs_object_id"] == "1001" and ISO_MS.match(ana["createdAt"])
    assert (bo["id"], bo["new"]) == ("1002", True) and "objectWriteTraceId" not in bo
    assert created.headers["X-HubSpot-RateLimit-Max"] == "10"
    assert created.headers["X-HubSpot-RateLimit-Remaining"] == "9"
    assert created.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "1000"

    # Same contact (HubSpot matches email case-insensitively): updated, properties merged, later write wins.
    updated = hubspot_upsert(fake, [contact("ANA@example.com", "lead-1-again", firstname="Ana Maria", lastname="Lima")])
    assert updated.status_code == 200, updated.text
    [again] = updated.json()["results"]
    assert (again["id"], again["new"], again["objectWriteTraceId"]) == ("1001", False, "lead-1-again")
    assert again["createdAt"] == ana["createdAt"]
    assert {k: again["properties"][k] for k in ("firstname", "lastname", "phone")} == {
        "firstname": "Ana Maria", "lastname": "Lima", "phone": "+14155550123",
    }

    # A custom unique property is its own key space.
    custom = hubspot_upsert(fake, [{"id": "lead-7", "idProperty": "swiftex_lead_id", "properties": {"score": 7}}])
    assert custom.json()["results"][0]["properties"]["swiftex_lead_id"] == "lead-7"
    assert custom.json()["results"][0]["properties"]["score"] == "7"

    state = hubspot_state(fake)
    first = state["contacts"][0]
    assert (first["id"], first["idProperty"], first["idValue"], first["writes"]) == ("1001", "email", "ana@example.com", 2)
    assert first["properties"] == {"firstname": "Ana Maria", "lastname": "Lima", "phone": "+14155550123", "email": "ANA@example.com"}
    assert [c["id"] for c in state["contacts"]] == ["1001", "1002", "1003"]
    assert state["stats"] == {"requests": 3, "accepted": 3, "rate_limited": 0, "rejected": 0, "errors": 0, "max_batch": 2}
    recorded = requests.get(f"{fake}/_fake/requests", params={"provider": "hubspot"}, timeout=5).json()["requests"]
    assert [(r["batch_size"], r["id_property"], r["status"]) for r in recorded] == [
        (2, "email", 200), (1, "email", 200), (1, "swiftex_lead_id", 200),
    ]


def test_hubspot_rejects_a_bad_batch_whole(fake: str) -> None:
    configure(fake, hubspot_rate_limit=0, hubspot_invalid_ids=["blocked@example.com"])

    def rejected(inputs: Any, expected: str) -> None:
        response = hubspot_upsert(fake, inputs)
        assert response.status_code == 400, response.text
        body = response.json()
        assert (body["status"], body["category"]) == ("error", "VALIDATION_ERROR") and body["correlationId"]
        assert expected in body["message"], body["message"]
        assert "X-HubSpot-RateLimit-Max" not in response.headers  # the limit is off

    many = [contact(f"user{i}@example.com") for i in range(101)]
    rejected(many, "Batch size 101 exceeds the limit of 100")
    rejected([contact("good@example.com"), contact("foo")],
             '"message":"Email address foo is invalid","error":"INVALID_EMAIL","name":"email"')
    rejected([{"id": "lead-1", "idProperty": "swiftex_lead_id", "properties": {"email": "not-an-email"}}],
             "Email address not-an-email is invalid")
    rejected([contact("good@example.com"), contact("blocked@example.com")], "Email address blocked@example.com is invalid")
    rejected([{"id": "x@example.com", "properties": {}}], "inputs[0].idProperty is required")
    rejected([contact("a@example.com"), {"id": "lead-2", "idProperty": "swiftex_lead_id", "properties": {}}],
             "share one idProperty")
    rejected([contact("a@example.com"), contact("A@example.com")], "Duplicate IDs found in batch input")
    not_json = requests.post(fake + HUBSPOT_UPSERT, data="{", headers={"Authorization": "Bearer t"}, timeout=5)
    assert not_json.status_code == 400 and not_json.json()["category"] == "VALIDATION_ERROR"
    assert hubspot_state(fake)["contacts"] == []  # nothing from any rejected batch was written

    accepted = hubspot_upsert(fake, many[:100])
    assert accepted.status_code == 200 and len(accepted.json()["results"]) == 100
    stats = hubspot_state(fake)["stats"]
    assert (stats["rejected"], stats["accepted"], stats["max_batch"]) == (8, 1, 100)
    recorded = requests.get(f"{fake}/_fake/requests", params={"provider": "hubspot"}, timeout=5).json()["requests"]
    assert (recorded[0]["batch_size"], recorded[0]["status"]) == (101, 400)


def test_hubspot_rate_limit_answers_429_with_retry_after(fake: str) -> None:
    def one(i: int) -> requests.Response:
        return hubspot_upsert(fake, [contact(f"burst{i}@example.com")])

    with ThreadPoolExecutor(max_workers=11) as pool:
        burst = list(pool.map(one, range(11)))
    ok = [r for r in burst if r.status_code == 200]
    [limited] = [r for r in burst if r.status_code == 429]
    assert len(ok) == 10
    assert sorted(int(r.headers["X-HubSpot-RateLimit-Remaining"]) for r in ok) == list(range(10))
    assert limited.headers["Retry-After"] == "1"
    assert limited.headers["X-HubSpot-RateLimit-Max"] == "10"
    assert limited.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert limited.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "1000"
    body = limited.json()
    assert (body["status"], body["errorType"], body["policyName"]) == ("error", "RATE_LIMIT", "SECONDLY")
    assert body["message"] == "You have reached your secondly limit." and body["correlationId"]

    # The limit is per token, and the window slides: after Retry-After the same token gets through.
    assert hubspot_upsert(fake, [contact("other@example.com")], token="another-app").status_code == 200
    time.sleep(int(limited.headers["Retry-After"]))
    assert one(99).status_code == 200
    stats = hubspot_state(fake)["stats"]
    assert (stats["requests"], stats["accepted"], stats["rate_limited"]) == (13, 12, 1)
    assert len(hubspot_state(fake)["contacts"]) == 12


def test_hubspot_chaos_switches_and_auth(fake: str) -> None:
    configure(fake, hubspot_always_429=True)
    throttled = hubspot_upsert(fake, [contact("ana@example.com")])
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    assert throttled.json()["errorType"] == "RATE_LIMIT"
    assert hubspot_state(fake)["contacts"] == []
    configure(fake, hubspot_always_429=False)
    assert hubspot_upsert(fake, [contact("ana@example.com")]).status_code == 200

    configure(fake, hubspot_error_rate=1.0)
    failed = hubspot_upsert(fake, [contact("bo@example.com")])
    assert failed.status_code == 500 and failed.json()["category"] == "INTERNAL_ERROR"
    configure(fake, hubspot_error_rate=0.0)

    missing = hubspot_upsert(fake, [contact("bo@example.com")], token=None)
    assert missing.status_code == 401
    error = missing.json()
    assert (error["status"], error["category"]) == ("error", "INVALID_AUTHENTICATION") and error["correlationId"]
    assert error["message"].startswith("Authentication credentials not found")
    assert hubspot_upsert(fake, [contact("bo@example.com")], token="").status_code == 401
    configure(fake, hubspot_token="pat-right")
    assert hubspot_upsert(fake, [contact("bo@example.com")], token="pat-wrong").status_code == 401
    assert hubspot_upsert(fake, [contact("bo@example.com")], token="pat-right").status_code == 200
    assert hubspot_state(fake)["stats"] == {
        "requests": 7, "accepted": 2, "rate_limited": 1, "rejected": 3, "errors": 1, "max_batch": 1,
    }


def test_crm_webhook_sink_records_deliveries_and_answers_the_configured_status(fake: str) -> None:
    secret = b"customer-secret"
    raw = json.dumps({"event": "lead.created", "lead": {"id": 42, "email": "ana@example.com"}}).encode()
    signature = "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Swiftex-Signature": signature, "X-Swiftex-Delivery": "d-1"}
    ok = requests.post(f"{fake}/crm-webhook/acme", data=raw, headers=headers, timeout=5)
    assert ok.status_code == 200 and ok.json() == {"ok": True}

    configure(fake, crm_webhook_status=500)
    assert requests.post(f"{fake}/crm-webhook/acme", data=raw, headers=headers, timeout=5).status_code == 500
    configure(fake, crm_webhook_status=429)
    limited = requests.post(f"{fake}/crm-webhook/globex", data=b"not json", timeout=5)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"

    deliveries = requests.get(f"{fake}/_fake/crm-webhook", timeout=5).json()["deliveries"]
    assert [(d["name"], d["status"]) for d in deliveries] == [("acme", 200), ("acme", 500), ("globex", 429)]
    first = deliveries[0]
    assert first["body"] == raw.decode() and first["json"]["lead"]["id"] == 42 and first["received_at"] > 0
    assert first["headers"]["X-Swiftex-Delivery"] == "d-1"
    # The sink does not verify signatures; a test recomputes one over the recorded raw body.
    expected = "sha256=" + hmac.new(secret, first["body"].encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(first["headers"]["X-Swiftex-Signature"], expected)
    assert deliveries[2]["body"] == "not json" and deliveries[2]["json"] is None
    only_acme = requests.get(f"{fake}/_fake/crm-webhook", params={"name": "acme"}, timeout=5).json()["deliveries"]
    assert len(only_acme) == 2
    recorded = requests.get(f"{fake}/_fake/requests", params={"provider": "crm_webhook"}, timeout=5).json()["requests"]
    assert [r["status"] for r in recorded] == [200, 500, 429]


def test_reset_clears_the_fake_crm_and_webhook_deliveries(fake: str) -> None:
    configure(fake, hubspot_always_429=True)
    assert hubspot_upsert(fake, [contact("ana@example.com")]).status_code == 429
    requests.post(f"{fake}/_fake/reset", timeout=5).raise_for_status()

    # Fill the token's window, reset, and the same token is let through at once.
    with ThreadPoolExecutor(max_workers=10) as pool:
        assert {r.status_code for r in pool.map(lambda i: hubspot_upsert(fake, [contact(f"u{i}@example.com")]), range(10))} == {200}
    requests.post(f"{fake}/crm-webhook/acme", json={"event": "lead.created"}, timeout=5)
    requests.post(f"{fake}/_fake/reset", timeout=5).raise_for_status()
    assert hubspot_state(fake) == {"contacts": [], "stats": {
        "requests": 0, "accepted": 0, "rate_limited": 0, "rejected": 0, "errors": 0, "max_batch": 0,
    }}
    assert requests.get(f"{fake}/_fake/crm-webhook", timeout=5).json() == {"deliveries": []}
    assert requests.get(f"{fake}/_fake/requests", timeout=5).json() == {"requests": []}
    after = hubspot_upsert(fake, [contact("ana@example.com")])
    assert after.status_code == 200 and after.json()["results"][0]["id"] == "1001"  # ids start over too


def test_hubspot_and_crm_webhook_config_is_validated(fake: str) -> None:
    config = requests.get(f"{fake}/_fake/config", timeout=5).json()
    assert (config["hubspot_latency_ms"], config["crm_webhook_latency_ms"]) == (5, 5)  # from the flags
    assert (config["hubspot_rate_limit"], config["hubspot_rate_window_ms"], config["hubspot_token"]) == (10, 1000, None)
    for bad in (
        {"hubspot_rate_limit": "10"}, {"hubspot_rate_limit": -1}, {"hubspot_rate_limit": 2.5},
        {"hubspot_rate_window_ms": 0}, {"hubspot_error_rate": 2}, {"hubspot_always_429": 1},
        {"hubspot_invalid_ids": "a@example.com"}, {"hubspot_token": ""},
        {"crm_webhook_status": 99}, {"crm_webhook_status": 700}, {"crm_webhook_status": True},
        {"crm_webhook_latency_ms": -5},
    ):
        response = requests.post(f"{fake}/_fake/config", json=bad, timeout=5)
        [key] = bad
        assert response.status_code == 400 and key in response.json()["error"], (bad, response.text)
    assert requests.get(f"{fake}/_fake/config", timeout=5).json() == config


def test_request_records_keep_parsed_bodies_out_of_the_garbage_collectors_walk() -> None:
    """A record holds plain values only (the body as JSON text), so full collections skip it;
    the control API still shows the body parsed."""
    import gc

    from aiohttp.test_utils import make_mocked_request

    from fakes.state import Config, State

    state = State(Config())
    body = {"messaging_product": "whatsapp", "to": "351912345678", "text": {"body": "Hi"}, "tags": ["a"]}
    record = state.record_request("whatsapp", make_mocked_request("POST", "/whatsapp/v23.0/1/messages"), body)
    form = state.record_request("twilio", make_mocked_request("POST", "/twilio"), "To=%2B1&Body=x")
    gc.collect()
    assert not gc.is_tracked(record)
    assert State.public(record)["body"] == body
    assert State.public(form)["body"] == "To=%2B1&Body=x"
