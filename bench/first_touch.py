"""First-touch figures for one rate step, read after the step has drained.

Per lead: submit -> provider-accepted, i.e. `first_response_at - captured_at`
(captured_at is stamped when the request reaches the API view, first_response_at
when the provider accepted the first message), and the same from the client's
*scheduled* send time (the loadgen's clock), which adds the request's queueing
in front of the server. "Overhead" is that latency minus the fakes' own delay
(model + WhatsApp latency as configured): the part Swiftex is responsible for.

Also: where the time goes (each first-touch timeline row's `since_capture_ms`),
greetings by state and text source, and what the fake provider actually
received, per recipient: a lead with no message there is lost, one with more
than one was messaged twice.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from datetime import datetime

from stack import FAKE_URL, MODEL_MS, PORT, WHATSAPP_MS, db_query

TIMELINE_KINDS = ["event.published", "first_touch.started", "greeting.composed", "message.accepted", "message.sent", "message.delivered"]
FINAL_STATES = ("done", "skipped", "failed")
FAKE_DELAY_MS = MODEL_MS + WHATSAPP_MS


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


def summarize(values_ms: list[float], ps=(50, 95, 99)) -> dict:
    values = sorted(values_ms)
    return {f"p{p}": round(percentile(values, p), 1) if values else None for p in ps} | {
        "max": round(values[-1], 1) if values else None,
        "count": len(values),
    }


def fake(path: str):
    with urllib.request.urlopen(f"{FAKE_URL}{path}", timeout=30) as response:
        return json.loads(response.read())


def reset_fake() -> None:
    """Drop the fake's records (and in-flight webhooks): call between steps, once the last one settled."""
    urllib.request.urlopen(urllib.request.Request(f"{FAKE_URL}/_fake/reset", data=b"{}", method="POST"), timeout=10).read()


def _webhook_stats() -> dict:
    # provider=openai has no webhooks: just the counters, without the list.
    return fake("/_fake/webhooks?provider=openai")["stats"]


def unsettled(since: datetime) -> int:
    """Leads captured since `since` whose greeting is not in a final state (or not there yet)."""
    return db_query(
        "SELECT count(*) FROM leads_lead l LEFT JOIN conversations_greeting g ON g.lead_id = l.id "
        "WHERE l.captured_at >= %s AND NOT l.imported AND (g.id IS NULL OR NOT g.state = ANY(%s))",
        [since, list(FINAL_STATES)],
    )[0][0]


def wait_settled(since: datetime, timeout: float) -> dict:
    """Wait (bounded) until every lead of the step has a final greeting and the fake's status webhooks stopped."""
    started = time.monotonic()
    left = unsettled(since)
    while left and time.monotonic() - started < timeout:
        time.sleep(0.5)
        left = unsettled(since)
    # Status webhooks (sent, delivered, read) follow each acceptance by ~50 ms each.
    previous = None
    while time.monotonic() - started < timeout:
        stats = _webhook_stats()
        if stats == previous:
            break
        previous = stats
        time.sleep(1.0)
    return {"waited_s": round(time.monotonic() - started, 1), "unsettled_leads": left}


def web_metrics() -> dict[tuple[str, frozenset], float]:
    """The web's Prometheus counters used here: request durations per route, webhooks by outcome."""
    wanted = {"swiftex_http_request_duration_seconds_sum", "swiftex_http_request_duration_seconds_count", "swiftex_webhooks_total"}
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=30) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in wanted:
            labels, _, value = rest.rpartition("} ")
            pairs = (item.split("=", 1) for item in labels.split(",") if "=" in item)
            out[(name, frozenset((key, val.strip('"')) for key, val in pairs))] = float(value)
    return out


def web_handling(before: dict, after: dict) -> dict:
    """Over the step, per route: requests and mean time inside Django (not counting the wait for a
    free gunicorn thread); and webhooks by outcome. The fake retries a webhook not answered 2xx
    within 5 s, so more webhooks than statuses sent (3 per message) means the web fell behind."""
    routes: dict[str, list[float]] = {}
    webhooks: dict[str, int] = {}
    for (name, labels), value in after.items():
        value -= before.get((name, labels), 0.0)
        label = dict(labels)
        if name == "swiftex_webhooks_total" and value:
            webhooks[f"{label['provider']} {label['outcome']}"] = int(value)
        elif name != "swiftex_webhooks_total":
            count_and_seconds = routes.setdefault(f"{label['method']} /{label['route']}", [0, 0.0])
            count_and_seconds[0 if name.endswith("_count") else 1] += value
    handling = {
        route: {"requests": int(count), "mean_ms": round(seconds / count * 1000, 1)}
        for route, (count, seconds) in sorted(routes.items()) if count
    }
    return {"web_mean_handling": handling, "webhooks_received": dict(sorted(webhooks.items()))}


def measure(since: datetime, loadgen: dict, phone_for, run_id: int) -> dict:
    leads = db_query(
        "SELECT c.phone, EXTRACT(EPOCH FROM l.captured_at)::float8, EXTRACT(EPOCH FROM l.first_response_at)::float8 "
        "FROM leads_lead l JOIN leads_contact c ON c.id = l.contact_id WHERE l.captured_at >= %s AND NOT l.imported",
        [since],
    )
    # Server side: capture -> accepted. Client side: scheduled send -> accepted (phone -> request index).
    index = {phone_for(i, run_id): i for i in range(loadgen["requests"])}
    server_ms, client_ms = [], []
    for phone, captured, responded in leads:
        if responded is None:
            continue
        server_ms.append((responded - captured) * 1000)
        if phone in index:
            scheduled = loadgen["scheduled_start_epoch"] + index[phone] * loadgen["interval_s"]
            client_ms.append((responded - scheduled) * 1000)

    # The first row of each kind per lead (an SMS fallback adds a second `message.accepted`).
    timeline: dict[str, list[float]] = {kind: [] for kind in TIMELINE_KINDS}
    for kind, ms in db_query(
        "SELECT e.kind, min((e.data->>'since_capture_ms')::float8) FROM leads_leadevent e JOIN leads_lead l ON l.id = e.lead_id "
        "WHERE l.captured_at >= %s AND NOT l.imported AND e.kind = ANY(%s) GROUP BY e.lead_id, e.kind",
        [since, TIMELINE_KINDS],
    ):
        timeline[kind].append(ms)

    greetings = db_query(
        "SELECT g.state, g.text_source, count(*) FROM conversations_greeting g JOIN leads_lead l ON l.id = g.lead_id "
        "WHERE l.captured_at >= %s AND NOT l.imported GROUP BY 1, 2 ORDER BY 1, 2",
        [since],
    )
    fallback_reasons = db_query(
        "SELECT g.model_error, count(*) FROM conversations_greeting g JOIN leads_lead l ON l.id = g.lead_id "
        "WHERE l.captured_at >= %s AND NOT l.imported AND g.text_source = 'template' GROUP BY 1 ORDER BY 2 DESC",
        [since],
    )
    model_ms = [float(ms) for (ms,) in db_query(
        "SELECT g.model_ms FROM conversations_greeting g JOIN leads_lead l ON l.id = g.lead_id "
        "WHERE l.captured_at >= %s AND NOT l.imported AND g.model_ms IS NOT NULL", [since])]
    messages = db_query(
        "SELECT m.channel, m.status, count(*) FROM conversations_message m JOIN leads_lead l ON l.id = m.lead_id "
        "WHERE l.captured_at >= %s AND NOT l.imported AND m.direction = 'outbound' GROUP BY 1, 2 ORDER BY 1, 2",
        [since],
    )

    wa_records = fake("/_fake/requests?provider=whatsapp")["requests"]
    sms_records = fake("/_fake/requests?provider=twilio")["requests"]
    model_records = fake("/_fake/requests?provider=openai")["requests"]
    model_calls = len(model_records)
    wa_accepted, sms_accepted = accepted_per_recipient(wa_records, sms_records)
    per_lead = Counter({phone: wa_accepted[phone] + sms_accepted[phone] for phone, _, _ in leads})
    step_phones = {phone for phone, _, _ in leads}

    template_count = sum(n for state, source, n in greetings if source == "template")
    return {
        "fake_delay_ms": FAKE_DELAY_MS,
        "submit_to_accepted_ms": summarize(server_ms),
        "overhead_ms": summarize([v - FAKE_DELAY_MS for v in server_ms]),
        "client_submit_to_accepted_ms": summarize(client_ms),
        "client_overhead_ms": summarize([v - FAKE_DELAY_MS for v in client_ms]),
        "timeline_since_capture_ms": {kind: summarize(values, (50, 99)) for kind, values in timeline.items()},
        "model_ms_seen_by_swiftex": summarize(model_ms),
        # The fakes share the cores too: how late, past their set delay, they answered (from
        # handling a request to its answer written; the wait before the fake read it is not in it).
        # Part of `overhead_ms` is this, not Swiftex.
        "fake_late_ms": {"model": _late(model_records, MODEL_MS), "whatsapp": _late(wa_records, WHATSAPP_MS)},
        "leads_created": len(leads),
        "leads_with_first_response": len(server_ms),
        "greetings": [{"state": state, "text_source": source, "count": n} for state, source, n in greetings],
        "template_fallbacks": template_count,
        "template_fallback_reasons": {reason or "(none)": n for reason, n in fallback_reasons},
        "messages_in_db": [{"channel": ch, "status": st, "count": n} for ch, st, n in messages],
        "fake": {
            "model_calls": model_calls,
            "whatsapp_requests": len(wa_records),
            "whatsapp_accepted": sum(wa_accepted.values()),
            "whatsapp_not_accepted": sum(1 for r in wa_records if r["status"] != 200),
            "sms_requests": len(sms_records),
            "sms_accepted": sum(sms_accepted.values()),
            "webhooks": _webhook_stats(),
            "accepted_for_other_recipients": sum(n for p, n in (wa_accepted + sms_accepted).items() if p not in step_phones),
        },
        "lost": sum(1 for phone in step_phones if per_lead[phone] == 0),
        "duplicated": sum(1 for phone in step_phones if per_lead[phone] > 1),
    }


def _late(records: list[dict], delay_ms: float) -> dict:
    return summarize([(r["answered_at"] - r["received_at"]) * 1000 - delay_ms for r in records if r.get("answered_at")], (50, 99))


def accepted_per_recipient(wa_records: list[dict] | None = None, sms_records: list[dict] | None = None) -> tuple[Counter, Counter]:
    """What the fake provider took (accepted sends only), per recipient in E.164: (WhatsApp, SMS)."""
    wa_records = fake("/_fake/requests?provider=whatsapp")["requests"] if wa_records is None else wa_records
    sms_records = fake("/_fake/requests?provider=twilio")["requests"] if sms_records is None else sms_records
    return (Counter("+" + r["body"]["to"].lstrip("+") for r in wa_records if r["status"] == 200),
            Counter(r["body"].get("To", "") for r in sms_records if r["status"] == 201))


def whole_run_tally() -> dict:
    """From the database, over every step: leads whose greeting went out more than once or never.

    Counted at the end because a step's figures are read when it settles, and a late
    SMS fallback (the sweep fails a WhatsApp message with no `sent` status after
    WHATSAPP_SENT_TIMEOUT_SECONDS) may come after that.
    """
    (leads, none, several, fallbacks), = db_query(
        "SELECT count(*), count(*) FILTER (WHERE accepted = 0), count(*) FILTER (WHERE accepted > 1), "
        "count(*) FILTER (WHERE swept > 0) FROM ("
        "  SELECT l.id, count(m.id) FILTER (WHERE m.provider_message_id IS NOT NULL) AS accepted,"
        "         count(m.id) FILTER (WHERE m.channel = 'whatsapp' AND m.error_code = 'timeout' AND m.provider_message_id IS NOT NULL) AS swept"
        "  FROM leads_lead l LEFT JOIN conversations_message m ON m.lead_id = l.id AND m.direction = 'outbound'"
        "  WHERE NOT l.imported GROUP BY l.id) per_lead"
    )
    return {
        "leads": leads,
        "leads_with_no_accepted_message": none,
        "leads_with_more_than_one_accepted_message": several,
        "whatsapp_accepted_then_failed_by_sweep": fallbacks,
    }
