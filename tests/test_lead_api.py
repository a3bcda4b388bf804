import json

import pytest

from leads import selectors
from leads.models import ApiKey, Contact, IdempotencyKey, Lead, LeadEvent, Submission
from swiftex.models import OutboxEvent
from tests.support import api_client, post_json

pytestmark = pytest.mark.django_db

URL = "/api/v1/leads"
ANA = {"name": "Ana Souza", "phone": "+14155550123", "email": "Ana@Example.COM", "source": "web", "consent": True}


def counts() -> dict:
    return {
        model.__name__: model.objects.count()
        for model in (Contact, Lead, Submission, LeadEvent, OutboxEvent, IdempotencyKey)
    }


def test_new_lead_is_created_with_normalized_contact_and_outbox_event(client_for):
    response = post_json(client_for, URL, {**ANA, "phone": "(415) 555-0123", "metadata": {"utm_source": "google"}, "form_version": 3})

    assert response.status_code == 201
    body = response.json()
    assert body["deduplicated"] is False
    assert response["Location"] == f"/api/v1/leads/{body['id']}"
    contact = Contact.objects.get()
    assert (contact.phone, contact.email, contact.consent) == ("+14155550123", "ana@example.com", True)
    submission = Submission.objects.get()
    assert submission.payload["form_version"] == 3  # unknown fields are kept, not dropped
    assert Lead.objects.get().routing == {"metadata": {"utm_source": "google"}}
    event = OutboxEvent.objects.get()
    assert event.event_type == "lead.created"
    assert event.payload["lead_id"] == body["id"]
    assert list(LeadEvent.objects.values_list("kind", flat=True)) == ["lead.created", "submission.received"]


def test_second_submission_of_same_person_reuses_contact_and_open_lead(client_for):
    first = post_json(client_for, URL, ANA).json()
    second = post_json(client_for, URL, {"email": "ana@example.com", "source": "facebook", "message": "call me"})

    assert second.status_code == 200
    assert second.json()["deduplicated"] is True
    assert second.json()["id"] == first["id"]
    assert counts() | {"IdempotencyKey": 0} == {
        "Contact": 1, "Lead": 1, "Submission": 2, "LeadEvent": 3, "OutboxEvent": 1, "IdempotencyKey": 0,
    }


def test_closed_lead_makes_the_next_submission_open_a_new_one(client_for):
    first = post_json(client_for, URL, ANA).json()
    Lead.objects.filter(pk=first["id"]).update(status=Lead.Status.LOST)

    again = post_json(client_for, URL, ANA)

    assert again.status_code == 201
    assert again.json()["id"] != first["id"]
    assert Contact.objects.count() == 1
    assert OutboxEvent.objects.count() == 2


def test_phone_only_contact_gains_the_email_of_a_later_submission(client_for):
    post_json(client_for, URL, {"phone": "+14155550123"})
    post_json(client_for, URL, {"phone": "+14155550123", "email": "late@example.com", "name": "Late"})

    contact = Contact.objects.get()
    assert (contact.email, contact.name) == ("late@example.com", "Late")


def test_repeated_external_id_is_deduplicated_without_a_second_submission(client_for):
    payload = {**ANA, "external_id": "form-123"}
    first = post_json(client_for, URL, payload)
    again = post_json(client_for, URL, payload)

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["duplicate_submission"] is True
    assert Submission.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [
        ('{"name": "Ana", "phone": ', "application/json", 400, "body"),
        ("[1, 2]", "application/json", 400, "body"),
        ({"name": 12, "phone": "+14155550123"}, "application/json", 400, "name"),
        ({"phone": 4155550123}, "application/json", 400, "phone"),
        ({"email": ["a@b.co"]}, "application/json", 400, "email"),
        ({"phone": "+14155550123", "consent": "yes"}, "application/json", 400, "consent"),
        ({"phone": "+14155550123", "metadata": "utm=1"}, "application/json", 400, "metadata"),
        ({"phone": "555-0000-not-a-number"}, "application/json", 400, "phone"),
        ({"phone": "+1 415 555"}, "application/json", 400, "phone"),
        ({"email": "not-an-email"}, "application/json", 400, "email"),
        ({"name": "No way to reach me"}, "application/json", 400, "phone"),
        ({"phone": "+14155550123", "source": "has spaces"}, "application/json", 400, "source"),
        ({"phone": "+14155550123", "name": "x" * 70_000}, "application/json", 413, None),
        ("name=Ana&phone=%2B14155550123", "application/x-www-form-urlencoded", 415, None),
        ("<lead/>", "text/xml", 415, None),
        # What PostgreSQL would refuse to store in the raw payload (jsonb), anywhere in it:
        (r'{"phone": "+14155550123", "metadata": {"x": "a\u0000b"}}', "application/json", 400, "metadata"),
        (r'{"phone": "+14155550123", "utm_source": "a\u0000b"}', "application/json", 400, "utm_source"),
        (r'{"phone": "+14155550123", "metadata": {"x": "\ud800"}}', "application/json", 400, "metadata"),
        (r'{"phone": "+14155550123", "metadata": {"\ud800": 1}}', "application/json", 400, "metadata"),
        (r'{"phone": "+14155550123", "metadata": {"x": 1e400}}', "application/json", 400, "metadata"),
        (r'{"phone": "+14155550123", "name": "A\u0000"}', "application/json", 400, "name"),
        ("[" * 5000 + "]" * 5000, "application/json", 400, "body"),
        ({"email": "a@" + ".".join(["\u0130" * 60] * 3) + ".com"}, "application/json", 400, "email"),  # longer once lower-cased
    ],
)
def test_bad_input_gets_a_clear_error_and_writes_nothing(client_for, body, content_type, status, field):
    data = body if isinstance(body, str) else json.dumps(body)
    response = client_for.post(URL, data=data, content_type=content_type)

    assert response.status_code == status, response.content
    payload = response.json()
    assert payload["detail"]
    if field:
        assert field in payload["errors"], payload
    assert counts() == dict.fromkeys(counts(), 0)


def test_missing_or_wrong_key_is_401(client_for, client):
    assert post_json(client, URL, ANA).status_code == 401
    assert post_json(api_client("swx_wrong"), URL, ANA).status_code == 401
    assert client.post(URL, data="{}", content_type="application/json", HTTP_AUTHORIZATION="Basic abc").status_code == 401
    assert counts()["Submission"] == 0


def test_revoked_key_is_refused(org_and_key):
    org, key = org_and_key
    ApiKey.objects.filter(organization=org).update(revoked_at="2020-01-01T00:00:00Z")
    assert post_json(api_client(key), URL, ANA).status_code == 401


def test_organizations_never_see_each_others_leads(client_for):
    from tests.factories import org_with_key

    lead_id = post_json(client_for, URL, ANA).json()["id"]
    _, other_key = org_with_key()
    other = api_client(other_key)

    assert other.get(f"{URL}/{lead_id}").status_code == 404
    assert post_json(other, URL, ANA).status_code == 201  # same person, separate tenant
    assert Contact.objects.count() == 2


def test_lead_detail_has_contact_submissions_and_timeline(client_for):
    lead_id = post_json(client_for, URL, ANA).json()["id"]
    post_json(client_for, URL, {"phone": "+14155550123", "source": "partner"})

    detail = client_for.get(f"{URL}/{lead_id}").json()

    assert detail["contact"]["phone"] == "+14155550123"
    assert [s["source"] for s in detail["submissions"]] == ["web", "partner"]
    assert [e["kind"] for e in detail["timeline"]] == ["lead.created", "submission.received", "submission.received"]
    assert detail["first_response_at"] is None


def test_idempotency_key_replays_the_first_response(client_for):
    first = post_json(client_for, URL, ANA, HTTP_IDEMPOTENCY_KEY="req-1")
    replay = post_json(client_for, URL, ANA, HTTP_IDEMPOTENCY_KEY="req-1")

    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.json() == first.json()
    assert replay["Idempotent-Replayed"] == "true"
    assert Submission.objects.count() == 1


def test_idempotency_key_reused_with_another_body_is_refused(client_for):
    post_json(client_for, URL, ANA, HTTP_IDEMPOTENCY_KEY="req-1")
    other = post_json(client_for, URL, {**ANA, "name": "Someone Else"}, HTTP_IDEMPOTENCY_KEY="req-1")

    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["errors"]
    assert Submission.objects.count() == 1


def test_batch_gives_per_item_results(client_for):
    batch = {
        "leads": [
            ANA,
            {"phone": "+14155550123", "source": "partner"},
            {"phone": "nope"},
            "not an object",
            {"email": "bo@example.com", "external_id": "p-1", "source": "partner"},
        ]
    }
    response = post_json(client_for, f"{URL}/batch", batch)

    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["http_status"] for r in results] == [201, 200, 400, 400, 201]
    assert "phone" in results[2]["errors"]
    assert results[1]["lead"]["id"] == results[0]["lead"]["id"]
    assert response.json()["summary"] == {"created": 2, "deduplicated": 1, "invalid": 2}
    assert (Contact.objects.count(), Lead.objects.count(), Submission.objects.count()) == (2, 2, 3)


def partner_client(org, source: str):
    _, raw_key = ApiKey.issue(org, name=source, source=source)
    return api_client(raw_key)


def test_a_partner_key_pins_the_source_of_every_lead_it_sends(org_and_key):
    org, _ = org_and_key
    partner = partner_client(org, "acme-leads")

    single = post_json(partner, URL, {"phone": "+14155550123"})
    batch = post_json(partner, f"{URL}/batch", {"leads": [
        {"email": "bo@example.com", "source": "acme-leads"},
        {"email": "cy@example.com", "source": "web"},
    ]})

    assert single.status_code == 201
    results = batch.json()["results"]
    assert [r["http_status"] for r in results] == [201, 400]
    assert results[1]["errors"] == {"source": ["This API key is pinned to source 'acme-leads'; leave source out or send 'acme-leads'."]}
    assert set(Submission.objects.values_list("source", flat=True)) == {"acme-leads"}
    assert set(Lead.objects.values_list("source", flat=True)) == {"acme-leads"}


def test_a_partner_key_reads_only_the_leads_its_source_submitted(org_and_key):
    org, key = org_and_key
    own = api_client(key)
    partner = partner_client(org, "acme-leads")
    web_lead = post_json(own, URL, {"phone": "+14155550123", "source": "web", "message": "from the web form", "name": "Ana Web",
                                    "email": "ana@web.example", "campaign": "spring"}).json()["id"]
    other = post_json(own, URL, {"phone": "+14155550199", "source": "web"}).json()["id"]
    shared = post_json(partner, URL, {"phone": "+14155550123", "message": "from the partner"}).json()["id"]  # the same person
    assert shared == web_lead

    assert partner.get(f"{URL}/{other}").status_code == 404  # a lead only the web form sent
    detail = partner.get(f"{URL}/{shared}").json()
    assert [s["source"] for s in detail["submissions"]] == ["acme-leads"]  # not the web form's submission
    received = [e["data"]["source"] for e in detail["timeline"] if e["kind"] == "submission.received"]
    assert received == ["acme-leads"]  # nor its timeline entry
    assert not [e for e in detail["timeline"] if e["data"].get("source") not in (None, "acme-leads")]  # nor lead.created's
    assert {e["kind"] for e in detail["timeline"]} <= set(selectors.PARTNER_TIMELINE)  # no owner, no conversation
    assert (detail["source"], detail["campaign"]) == ("acme-leads", "")  # not the web form's
    assert detail["contact"] == {"id": detail["contact"]["id"], "phone": "+14155550123", "consent": False}  # no name or e-mail it never sent
    assert "assignment" not in detail and "crm_sync" not in detail and detail["messages"] == []
    assert [s["source"] for s in own.get(f"{URL}/{shared}").json()["submissions"]] == ["web", "acme-leads"]


def test_partners_idempotency_keys_are_their_own(org_and_key):
    org, _ = org_and_key
    acme, zen = partner_client(org, "acme"), partner_client(org, "zen")
    first = post_json(acme, URL, {"phone": "+14155550140"}, HTTP_IDEMPOTENCY_KEY="order-1001")
    other = post_json(zen, URL, {"phone": "+14155550141"}, HTTP_IDEMPOTENCY_KEY="order-1001")  # their own order 1001
    assert (first.status_code, other.status_code) == (201, 201) and "Idempotent-Replayed" not in other
    assert post_json(zen, URL, {"phone": "+14155550141"}, HTTP_IDEMPOTENCY_KEY="order-1001")["Idempotent-Replayed"] == "true"
    assert Submission.objects.filter(source="zen").count() == 1


def test_partners_external_ids_are_their_own_and_redelivery_never_duplicates(org_and_key):
    org, _ = org_and_key
    acme, zen = partner_client(org, "acme"), partner_client(org, "zen")
    leads = [{"email": f"p{i}@example.com", "external_id": f"x-{i}"} for i in range(3)]

    first = post_json(acme, f"{URL}/batch", {"leads": leads + [leads[0]]})  # a repeat inside the batch, too
    again = post_json(acme, f"{URL}/batch", {"leads": leads})
    other = post_json(zen, f"{URL}/batch", {"leads": [{"email": "z@example.com", "external_id": "x-0"}]})

    assert first.json()["summary"] == {"created": 3, "deduplicated": 1, "invalid": 0}
    assert first.json()["results"][3]["lead"]["duplicate_submission"] is True
    assert again.json()["summary"] == {"created": 0, "deduplicated": 3, "invalid": 0}
    assert all(r["lead"]["duplicate_submission"] for r in again.json()["results"])
    assert other.json()["summary"]["created"] == 1  # the same id from another partner is another lead
    assert Submission.objects.filter(source="acme").count() == 3
    assert OutboxEvent.objects.filter(event_type="lead.created").count() == 4


def test_a_bad_item_does_not_stop_the_others_and_says_which_field(client_for):
    response = post_json(client_for, f"{URL}/batch", {"leads": [
        {"phone": "+14155550123", "consent": "yes"},
        {"email": "not-an-email"},
        {"email": "ok@example.com", "metadata": ["not", "an", "object"]},
        {"email": "fine@example.com"},
    ]})

    results = response.json()["results"]
    assert [r["http_status"] for r in results] == [400, 400, 400, 201]
    assert [sorted(r.get("errors", {})) for r in results] == [["consent"], ["email"], ["metadata"], []]
    assert Lead.objects.count() == 1


def test_a_batch_item_that_cannot_be_stored_is_refused_alone(client_for):
    raw = '{"leads": [{"email": "nul@example.com", "metadata": {"page": "a\\u0000"}}, {"email": "fine@example.com"}]}'
    response = client_for.post(f"{URL}/batch", data=raw, content_type="application/json")
    results = response.json()["results"]
    assert [r["http_status"] for r in results] == [400, 201]
    assert results[0]["errors"] == {"metadata": ["metadata.page: text may not contain NUL characters (\\u0000)."]}


def test_a_chunked_body_is_refused_with_411_not_read_as_empty(client_for):
    # Django's test client sends no Content-Length with an empty body, as a chunked client would.
    response = client_for.generic("POST", URL, "", CONTENT_TYPE="application/json", HTTP_TRANSFER_ENCODING="chunked")
    assert response.status_code == 411 and "Content-Length" in response.json()["detail"]


def test_batch_over_the_body_limit_is_413_and_writes_nothing(client_for, settings):
    settings.LEADS_BATCH_MAX_BODY_BYTES = 2048
    response = post_json(client_for, f"{URL}/batch", {"leads": [{**ANA, "message": "x" * 3000}]})

    assert response.status_code == 413
    assert counts()["Submission"] == 0


def test_batch_over_the_item_limit_is_413_and_writes_nothing(client_for, settings):
    settings.LEADS_BATCH_MAX_ITEMS = 3
    response = post_json(client_for, f"{URL}/batch", {"leads": [ANA] * 4})

    assert response.status_code == 413
    assert counts()["Submission"] == 0


def test_batch_needs_a_leads_array(client_for):
    response = post_json(client_for, f"{URL}/batch", {"items": []})
    assert response.status_code == 400
    assert "leads" in response.json()["errors"]
