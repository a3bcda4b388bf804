"""The fake server's live config, its validation, and the bounded records of what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine

import aiohttp
from aiohttp import web

WHATSAPP_STATUSES = frozenset({"sent", "delivered", "read", "failed"})
SMS_STATUSES = frozenset({"accepted", "queued", "sending", "sent", "delivered", "undelivered", "failed", "read"})


@dataclass(frozen=True)
class Config:
    """Frozen so a handler can take one consistent snapshot (`state.config`) per request."""

    model_latency_ms: float = 400.0
    whatsapp_latency_ms: float = 150.0
    sms_latency_ms: float = 150.0
    status_delay_ms: float = 50.0
    model_error_rate: float = 0.0
    whatsapp_error_rate: float = 0.0
    sms_error_rate: float = 0.0
    # recipient digits (no "+") -> {"http", "code", "title", "message"?}
    whatsapp_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    whatsapp_undeliverable: tuple[str, ...] = ()
    whatsapp_no_status: tuple[str, ...] = ()
    whatsapp_statuses: tuple[str, ...] = ("sent", "delivered", "read")
    # E.164 number ("+" and digits) -> {"http", "code", "message"?}
    sms_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    sms_undeliverable: tuple[str, ...] = ()
    sms_statuses: tuple[str, ...] = ("sent", "delivered")
    duplicate_statuses: bool = False
    reverse_statuses: bool = False
    send_webhooks: bool = True
    whatsapp_token: str | None = None  # None: any non-empty bearer token is accepted
    twilio_auth_token: str = "fake-auth-token"
    whatsapp_app_secret: str = "fake-app-secret"
    webhook_url: str = "http://127.0.0.1:8000"
    # Waits before each retry of a webhook not answered 2xx within 5 s. Short by default so
    # tests need not wait; the benchmarks set a provider-like schedule (retries spread out,
    # with decreasing frequency) so a slow web is not hit by an immediate retry storm.
    webhook_retry_delays_ms: tuple[float, ...] = (200.0, 500.0, 1000.0)
    hubspot_latency_ms: float = 100.0
    hubspot_error_rate: float = 0.0
    hubspot_token: str | None = None  # None: any non-empty bearer token is accepted
    # ids (matched case-insensitively) that HubSpot rejects, failing the whole batch they are in
    hubspot_invalid_ids: tuple[str, ...] = ()
    # Requests per token per sliding window, like HubSpot's per-app "secondly" limit; 0 disables it.
    hubspot_rate_limit: int = 10
    hubspot_rate_window_ms: float = 1000.0
    hubspot_always_429: bool = False
    crm_webhook_status: int = 200
    crm_webhook_latency_ms: float = 20.0

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    pass


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value)


def _number(key: str, value: Any) -> float:
    # bool is an int subclass; `true` is never a valid latency or rate
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: must be a number")
    return float(value)


def _ms(key: str, value: Any) -> float:
    ms = _number(key, value)
    if not 0 <= ms <= 600_000:
        raise ConfigError(f"{key}: must be between 0 and 600000 ms")
    return ms


def _rate(key: str, value: Any) -> float:
    rate = _number(key, value)
    if not 0 <= rate <= 1:
        raise ConfigError(f"{key}: must be between 0 and 1")
    return rate


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise ConfigError(f"{key}: must be a whole number between 0 and 1000000")
    return value


def _window(key: str, value: Any) -> float:
    # A zero-length window would make every request the first in its window: no limit at all.
    ms = _ms(key, value)
    if ms < 1:
        raise ConfigError(f"{key}: must be between 1 and 600000 ms")
    return ms


def _http_status(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise ConfigError(f"{key}: must be an HTTP status between 200 and 599")
    return value


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false")
    return value


def _str_list(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: must be a list of non-empty strings")
    return value


def _wa_numbers(key: str, value: Any) -> tuple[str, ...]:
    # Stored as bare digits, the form Meta uses for wa_id, so "+1415..." and "1415..." both match.
    return tuple(_digits(v) for v in _str_list(key, value))


def _sms_numbers(key: str, value: Any) -> tuple[str, ...]:
    return tuple("+" + _digits(v) for v in _str_list(key, value))


def _ids(key: str, value: Any) -> tuple[str, ...]:
    return tuple(_str_list(key, value))


def _delays(key: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) > 10:
        raise ConfigError(f"{key}: must be a list of at most 10 delays in ms")
    return tuple(_ms(f"{key}[{i}]", v) for i, v in enumerate(value))


def _statuses(allowed: frozenset[str]) -> Callable[[str, Any], tuple[str, ...]]:
    def check(key: str, value: Any) -> tuple[str, ...]:
        items = _str_list(key, value)
        bad = [v for v in items if v not in allowed]
        if bad:
            raise ConfigError(f"{key}: unknown status {bad[0]!r} (allowed: {', '.join(sorted(allowed))})")
        return tuple(items)

    return check


def _secret(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string")
    return value


def _optional_secret(key: str, value: Any) -> str | None:
    return None if value is None else _secret(key, value)


def _url(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
        raise ConfigError(f"{key}: must be an http(s) URL")
    return value.rstrip("/")


def _error_map(required: dict[str, type], optional: dict[str, type], normalise: Callable[[str], str]):
    def check(key: str, value: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be an object mapping a number to an error")
        out: dict[str, dict[str, Any]] = {}
        for number, spec in value.items():
            where = f"{key}[{number!r}]"
            if not isinstance(spec, dict):
                raise ConfigError(f"{where}: must be an object")
            unknown = sorted(spec.keys() - required.keys() - optional.keys())
            if unknown:
                raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
            for name, kind in {**required, **optional}.items():
                if name not in spec:
                    if name in required:
                        raise ConfigError(f"{where}: missing {name!r}")
                    continue
                v = spec[name]
                if isinstance(v, bool) or not isinstance(v, kind):
                    raise ConfigError(f"{where}.{name}: must be {kind.__name__}")
            if not 400 <= spec["http"] <= 599:
                raise ConfigError(f"{where}.http: must be an HTTP error status (400-599)")
            out[normalise(number)] = dict(spec)
        return out

    return check


_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "model_latency_ms": _ms,
    "whatsapp_latency_ms": _ms,
    "sms_latency_ms": _ms,
    "status_delay_ms": _ms,
    "model_error_rate": _rate,
    "whatsapp_error_rate": _rate,
    "sms_error_rate": _rate,
    "whatsapp_errors": _error_map({"http": int, "code": int, "title": str}, {"message": str}, _digits),
    "whatsapp_undeliverable": _wa_numbers,
    "whatsapp_no_status": _wa_numbers,
    "whatsapp_statuses": _statuses(WHATSAPP_STATUSES),
    "sms_errors": _error_map({"http": int, "code": int}, {"message": str}, lambda n: "+" + _digits(n)),
    "sms_undeliverable": _sms_numbers,
    "sms_statuses": _statuses(SMS_STATUSES),
    "duplicate_statuses": _flag,
    "reverse_statuses": _flag,
    "send_webhooks": _flag,
    "whatsapp_token": _optional_secret,
    "twilio_auth_token": _secret,
    "whatsapp_app_secret": _secret,
    "webhook_url": _url,
    "webhook_retry_delays_ms": _delays,
    "hubspot_latency_ms": _ms,
    "hubspot_error_rate": _rate,
    "hubspot_token": _optional_secret,
    "hubspot_invalid_ids": _ids,
    "hubspot_rate_limit": _count,
    "hubspot_rate_window_ms": _window,
    "hubspot_always_429": _flag,
    "crm_webhook_status": _http_status,
    "crm_webhook_latency_ms": _ms,
}
assert _VALIDATORS.keys() == {f.name for f in dataclasses.fields(Config)}


def merge_config(current: Config, update: Any) -> Config:
    """Validate every key first, then apply all of them: a bad update changes nothing."""
    if not isinstance(update, dict):
        raise ConfigError("config: body must be a JSON object")
    changes = {}
    for key, value in update.items():
        if key not in _VALIDATORS:
            raise ConfigError(f"{key}: unknown config key")
        changes[key] = _VALIDATORS[key](key, value)
    return dataclasses.replace(current, **changes)


class HubSpotStore:
    """The fake CRM: contacts keyed by (idProperty, id value), counters, and each token's rate window."""

    FIRST_ID = 1001

    def __init__(self) -> None:
        self.contacts: dict[tuple[str, str], dict[str, Any]] = {}
        self.next_id = self.FIRST_ID
        # token -> arrival times (time.monotonic) of the requests let through in the current window
        self.windows: dict[str, deque[float]] = {}
        self.stats = dict.fromkeys(("requests", "accepted", "rate_limited", "rejected", "errors", "max_batch"), 0)

    def new_id(self) -> str:
        self.next_id += 1
        return str(self.next_id - 1)


class State:
    """Everything the handlers share. Records are deques so a long benchmark cannot grow memory forever."""

    def __init__(self, config: Config, max_records: int = 200_000) -> None:
        self.initial = config
        self.config = config
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.webhooks: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.webhook_stats = {"attempts": 0, "delivered": 0, "gave_up": 0}
        self.hubspot = HubSpotStore()
        self.crm_webhook_deliveries: deque[dict[str, Any]] = deque(maxlen=max_records)
        # Strong references: the event loop only keeps weak ones to running tasks.
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None

    async def receive_json(self, provider: str, request: web.Request) -> tuple[Any, dict[str, Any]]:
        """Read a JSON request body (kept as text if it is not JSON) and record the request."""
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        return body, self.record_request(provider, request, body)

    def record_request(self, provider: str, request: web.Request, body: Any) -> dict[str, Any]:
        """Appended on arrival (so the list is in arrival order) and completed by `answered`."""
        record = {
            "provider": provider,
            "path": request.path,
            "received_at": time.time(),
            "answered_at": None,
            "status": None,
            "message_id": None,
        }
        # A parsed body is kept as JSON text: a record of plain values is one object the garbage
        # collector stops walking, where the parsed dicts and lists were a dozen it walked on
        # every full pass. At 5,000 leads/min those passes over 50,000-170,000 objects held the
        # fake's event loop for up to ~250 ms, and the late answers counted as Swiftex's overhead.
        if isinstance(body, (dict, list)):
            record["body_json"] = json.dumps(body)
        else:
            record["body"] = body
        self.requests.append(record)
        return record

    @staticmethod
    def public(record: dict[str, Any]) -> dict[str, Any]:
        """A request record as the control API shows it, with its body parsed again."""
        if "body_json" not in record:
            return record
        shown = {key: value for key, value in record.items() if key != "body_json"}
        shown["body"] = json.loads(record["body_json"])
        return shown

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def cancel_tasks(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reset(self) -> None:
        # In-flight status webhooks belong to the previous test; drop them with the records.
        await self.cancel_tasks()
        self.config = self.initial
        self.requests.clear()
        self.webhooks.clear()
        self.webhook_stats = dict.fromkeys(self.webhook_stats, 0)
        self.hubspot = HubSpotStore()
        self.crm_webhook_deliveries.clear()


STATE = web.AppKey("state", State)


async def answer(
    request: web.Request,
    record: dict[str, Any],
    status: int,
    payload: dict[str, Any],
    message_id: str | None = None,
    then: Coroutine[Any, Any, None] | None = None,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Send the answer now, then start `then` (status webhooks), so webhooks never delay or precede it."""
    response = web.json_response(payload, status=status, headers=headers)
    record.update(status=status, message_id=message_id)
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        # The client gave up waiting; like the real provider, the message still counts as accepted.
        pass
    record["answered_at"] = time.time()
    if then is not None:
        request.app[STATE].spawn(then)
    return response
