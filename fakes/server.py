"""One loopback HTTP server that fakes OpenAI, the WhatsApp Cloud API, Twilio, HubSpot and the Meta Graph
API for Lead Ads for Swiftex, plus a customer CRM webhook endpoint.

Usage:

    python -m fakes --port 8900 --webhook-url http://127.0.0.1:8000 \\
        --whatsapp-app-secret S --twilio-auth-token T \\
        --model-latency-ms 400 --whatsapp-latency-ms 150 --sms-latency-ms 150

Every option can also come from the environment (FAKE_HOST, FAKE_PORT, FAKE_WEBHOOK_URL,
FAKE_WHATSAPP_APP_SECRET, FAKE_WHATSAPP_TOKEN, FAKE_TWILIO_AUTH_TOKEN, FAKE_MODEL_LATENCY_MS,
FAKE_WHATSAPP_LATENCY_MS, FAKE_SMS_LATENCY_MS, FAKE_STATUS_DELAY_MS, FAKE_WEBHOOK_RETRY_DELAYS_MS,
FAKE_HUBSPOT_TOKEN, FAKE_HUBSPOT_LATENCY_MS, FAKE_HUBSPOT_RATE_LIMIT, FAKE_CRM_WEBHOOK_LATENCY_MS,
FAKE_MAX_RECORDS); a flag wins over its variable. `--port 0` picks a free port. Once listening it
prints exactly one line, `fake providers listening on http://HOST:PORT`, and SIGTERM/SIGINT stop it
with exit status 0.

Point Swiftex at it with
    OPENAI_BASE_URL=http://127.0.0.1:8900/openai/v1
    WHATSAPP_API_URL=http://127.0.0.1:8900/whatsapp/v23.0
    TWILIO_API_URL=http://127.0.0.1:8900/twilio
    HUBSPOT_API_URL=http://127.0.0.1:8900/hubspot
    GRAPH_API_URL=http://127.0.0.1:8900/graph/v23.0   (META_APP_SECRET = --whatsapp-app-secret: one Meta app)
and a signed-webhook CRM integration at http://127.0.0.1:8900/crm-webhook/{any-name}.

Provider endpoints:
    POST /openai/v1/chat/completions
    POST /whatsapp/{version}/{phone_number_id}/messages    -> signed webhooks to {webhook_url}/webhooks/whatsapp
    POST /twilio/2010-04-01/Accounts/{sid}/Messages.json   -> signed callbacks to the request's StatusCallback
    POST /hubspot/crm/v3/objects/contacts/batch/upsert     Bearer token; at most 100 inputs sharing one
                                                           idProperty; one invalid value fails the whole batch
                                                           (400 VALIDATION_ERROR); hubspot_rate_limit requests per
                                                           hubspot_rate_window_ms per token, then 429 + Retry-After
    POST /crm-webhook/{name}                               records the delivery (headers, raw body), answers
                                                           crm_webhook_status; signatures are not checked
    GET  /graph/{version}/{leadgen_id}                     Meta Lead Ads: one lead; GET .../{form_id}/leads lists a
                                                           form's leads (filtering, cursor paging). Seeded, broken
                                                           and made to send the signed leadgen webhook to
                                                           {webhook_url}/webhooks/meta/leadgen through
                                                           /_fake/graph/* (fakes/graph.py lists them)

Chaos switches (POST /_fake/config): hubspot_always_429, hubspot_error_rate, hubspot_invalid_ids,
hubspot_rate_limit / hubspot_rate_window_ms, hubspot_latency_ms, hubspot_token; crm_webhook_status
(e.g. 500, or 429 which adds Retry-After: 1) and crm_webhook_latency_ms.

Control API (JSON):
    GET  /_fake/health                      {"ok": true}
    GET  /_fake/config, POST /_fake/config  read / merge the live config (unknown keys or bad types: 400)
    POST /_fake/reset                       start-up config back, records and in-flight webhooks dropped
    GET  /_fake/requests?provider=...       {"requests": [...]} in arrival order
    GET  /_fake/webhooks?provider=...       {"webhooks": [...], "stats": {...}} deliveries attempted
    GET  /_fake/hubspot/contacts            {"contacts": [...], "stats": {"requests", "accepted", "rate_limited",
                                            "rejected" (400/401), "errors" (500), "max_batch"}}
    GET  /_fake/crm-webhook?name=...        {"deliveries": [{"name", "headers", "body", "json", "received_at",
                                            "status"}, ...]} in arrival order
Provider names for ?provider=: openai, whatsapp, twilio, hubspot, crm_webhook. The reset also empties
the fake CRM, its counters and rate windows, and the CRM webhook deliveries.

Latency is an asyncio.sleep, so slow answers overlap instead of queueing. The server only binds to
loopback: it has no real authentication and must never be reachable from outside the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import sys
from typing import Any, Callable

import aiohttp
from aiohttp import web

from fakes import control, crm_webhook, graph, hubspot, openai, twilio, whatsapp
from fakes.state import STATE, Config, ConfigError, State, merge_config


def build_app(config: Config, max_records: int = 200_000) -> web.Application:
    # Generous body limit: a benchmark may send long prompts, and aiohttp's 1 MiB default would 413 them.
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[STATE] = State(config, max_records)
    for module in (openai, whatsapp, twilio, hubspot, crm_webhook, graph, control):
        module.add_routes(app)
    app.on_startup.append(_open_session)
    app.on_cleanup.append(_close_session)
    return app


async def _open_session(app: web.Application) -> None:
    # One pooled client for every webhook; a connection per webhook would be the bottleneck in benchmarks.
    app[STATE].session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))


async def _close_session(app: web.Application) -> None:
    state = app[STATE]
    await state.cancel_tasks()
    if state.session is not None:
        await state.session.close()


def loopback_host(host: str) -> str:
    """The address to bind for `host`, or ValueError if it is not loopback."""
    if host == "localhost":
        # Bind one address: "localhost" may resolve to both 127.0.0.1 and ::1, which with --port 0 would get two ports.
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(
            f"refusing to bind to {host!r}: the fake providers have no real authentication, "
            "so they only listen on a loopback address (127.0.0.0/8, ::1 or localhost)"
        )
    return str(address)


def _env(name: str, default: Any) -> Any:
    return os.environ.get(name, default)


def _non_negative(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text}")
        return value

    return parse


def _ms_list(flag: str, text: str) -> list[float]:
    try:
        return [float(ms) for ms in text.split(",") if ms.strip()]
    except ValueError:
        raise ValueError(f"{flag}: {text!r} must be comma-separated milliseconds, e.g. 200,500,1000") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fakes", description="Fake OpenAI, WhatsApp, Twilio and HubSpot servers.")
    # argparse runs `type` on string defaults too, so a bad FAKE_* value fails the same way a bad flag does.
    parser.add_argument("--host", default=_env("FAKE_HOST", "127.0.0.1"), help="loopback only (env FAKE_HOST)")
    parser.add_argument("--port", type=int, default=_env("FAKE_PORT", "8900"), help="0 picks a free port (env FAKE_PORT)")
    parser.add_argument("--webhook-url", default=_env("FAKE_WEBHOOK_URL", "http://127.0.0.1:8000"),
                        help="Swiftex base URL for WhatsApp webhooks (env FAKE_WEBHOOK_URL)")
    parser.add_argument("--whatsapp-app-secret", default=_env("FAKE_WHATSAPP_APP_SECRET", "fake-app-secret"),
                        help="signs X-Hub-Signature-256 (env FAKE_WHATSAPP_APP_SECRET)")
    parser.add_argument("--whatsapp-token", default=_env("FAKE_WHATSAPP_TOKEN", None),
                        help="the only bearer token accepted; unset accepts any (env FAKE_WHATSAPP_TOKEN)")
    parser.add_argument("--twilio-auth-token", default=_env("FAKE_TWILIO_AUTH_TOKEN", "fake-auth-token"),
                        help="Basic auth password and X-Twilio-Signature key (env FAKE_TWILIO_AUTH_TOKEN)")
    ms = _non_negative(float)
    parser.add_argument("--model-latency-ms", type=ms, default=_env("FAKE_MODEL_LATENCY_MS", "400"),
                        help="env FAKE_MODEL_LATENCY_MS")
    parser.add_argument("--whatsapp-latency-ms", type=ms, default=_env("FAKE_WHATSAPP_LATENCY_MS", "150"),
                        help="env FAKE_WHATSAPP_LATENCY_MS")
    parser.add_argument("--sms-latency-ms", type=ms, default=_env("FAKE_SMS_LATENCY_MS", "150"),
                        help="env FAKE_SMS_LATENCY_MS")
    parser.add_argument("--status-delay-ms", type=ms, default=_env("FAKE_STATUS_DELAY_MS", "50"),
                        help="gap before each status webhook (env FAKE_STATUS_DELAY_MS)")
    parser.add_argument("--webhook-retry-delays-ms", default=_env("FAKE_WEBHOOK_RETRY_DELAYS_MS", "200,500,1000"),
                        help="waits before each retry of an unanswered webhook, comma-separated (env FAKE_WEBHOOK_RETRY_DELAYS_MS)")
    parser.add_argument("--hubspot-token", default=_env("FAKE_HUBSPOT_TOKEN", None),
                        help="the only HubSpot bearer token accepted; unset accepts any (env FAKE_HUBSPOT_TOKEN)")
    parser.add_argument("--hubspot-latency-ms", type=ms, default=_env("FAKE_HUBSPOT_LATENCY_MS", "100"),
                        help="env FAKE_HUBSPOT_LATENCY_MS")
    parser.add_argument("--hubspot-rate-limit", type=_non_negative(int), default=_env("FAKE_HUBSPOT_RATE_LIMIT", "10"),
                        help="HubSpot requests per token per 1 s window, 0 for no limit (env FAKE_HUBSPOT_RATE_LIMIT)")
    parser.add_argument("--crm-webhook-latency-ms", type=ms, default=_env("FAKE_CRM_WEBHOOK_LATENCY_MS", "20"),
                        help="env FAKE_CRM_WEBHOOK_LATENCY_MS")
    parser.add_argument("--max-records", type=int, default=_env("FAKE_MAX_RECORDS", "200000"),
                        help="requests and webhooks kept for /_fake/* (env FAKE_MAX_RECORDS)")
    args = parser.parse_args(argv)
    try:
        args.bind_host = loopback_host(args.host)
        args.config = merge_config(Config(), {
            "webhook_url": args.webhook_url,
            "whatsapp_app_secret": args.whatsapp_app_secret,
            "whatsapp_token": args.whatsapp_token or None,
            "twilio_auth_token": args.twilio_auth_token,
            "model_latency_ms": args.model_latency_ms,
            "whatsapp_latency_ms": args.whatsapp_latency_ms,
            "sms_latency_ms": args.sms_latency_ms,
            "status_delay_ms": args.status_delay_ms,
            "webhook_retry_delays_ms": _ms_list("--webhook-retry-delays-ms", args.webhook_retry_delays_ms),
            "hubspot_token": args.hubspot_token or None,
            "hubspot_latency_ms": args.hubspot_latency_ms,
            "hubspot_rate_limit": args.hubspot_rate_limit,
            "crm_webhook_latency_ms": args.crm_webhook_latency_ms,
        })
    except (ValueError, ConfigError) as exc:
        parser.error(str(exc))
    if not 0 <= args.port <= 65535 or args.max_records < 1:
        parser.error("--port must be 0-65535 and --max-records at least 1")
    return args


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(build_app(args.config, args.max_records), access_log=None, handle_signals=False)
    await runner.setup()
    # shutdown_timeout: in-flight answers are at most a latency long; don't hang a test teardown for 60 s.
    site = web.TCPSite(runner, args.bind_host, args.port, backlog=1024, shutdown_timeout=2.0)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(f"fake providers: cannot listen on {args.bind_host}:{args.port}: {exc}") from None
    port = runner.addresses[0][1]
    shown = args.host if args.host == "localhost" else args.bind_host
    host = f"[{shown}]" if ":" in shown else shown
    print(f"fake providers listening on http://{host}:{port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
