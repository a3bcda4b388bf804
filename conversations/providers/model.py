"""The text writer for greetings and replies: an OpenAI-compatible chat model inside a hard time budget.

The official client's default timeout is 600 s and it retries on its own;
here it gets the budget as its timeout and no retries, and the call also runs
under a wall-clock deadline, so a server that trickles bytes cannot stretch
it either. Whatever goes wrong, the caller gets a `ModelUnavailable` in time
and uses the organization's fallback text.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import openai
from django.conf import settings

from conversations.providers.base import one_line
from swiftex import metrics

PROVIDER = "openai"
MAX_GREETING_CHARS = 600

_clients: dict[tuple[str, str, float], openai.OpenAI] = {}
_clients_lock = threading.Lock()
# Calls run here so the caller can stop waiting at the deadline; a call that
# overruns is discarded and ends at the client's own timeout, which bounds the
# connect and each read, not the whole answer (a server trickling bytes keeps a
# thread here longer, never a greeting).
_executor = ThreadPoolExecutor(max_workers=128, thread_name_prefix="greeting-model")


class ModelUnavailable(Exception):
    """No usable text from the model in time; `reason` says why (shown on the timeline)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:300]


def _client(budget: float) -> openai.OpenAI:
    key = (settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY, budget)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = openai.OpenAI(
                    base_url=settings.OPENAI_BASE_URL, api_key=settings.OPENAI_API_KEY, timeout=budget, max_retries=0
                )
    return client


def write_greeting(*, model: str, system_prompt: str, lead_facts: str, budget: float | None = None) -> str:
    """The model's greeting, or ModelUnavailable within `budget` seconds."""
    return _write(model, [{"role": "system", "content": system_prompt}, {"role": "user", "content": lead_facts}], budget)


def write_reply(*, model: str, system_prompt: str, history: list[tuple[str, str]], budget: float | None = None) -> str:
    """The model's answer to a conversation (oldest first; roles `user` = the contact,
    `assistant` = us), or ModelUnavailable within `budget` seconds."""
    messages = [{"role": "system", "content": system_prompt}] + [{"role": role, "content": text} for role, text in history]
    return _write(model, messages, budget)


def _write(model: str, messages: list[dict], budget: float | None) -> str:
    if not settings.OPENAI_API_KEY:
        raise ModelUnavailable("no OPENAI_API_KEY set")
    budget = budget if budget is not None else settings.GREETING_MODEL_BUDGET_SECONDS
    deadline = time.monotonic() + budget
    future = _executor.submit(_complete, _client(budget), model, messages)
    try:
        text = future.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        future.cancel()
        raise ModelUnavailable(f"no answer within the {budget:.2f}s budget") from None
    except openai.APITimeoutError:
        raise ModelUnavailable(f"no answer within the {budget:.2f}s budget") from None
    except openai.APIStatusError as exc:
        raise ModelUnavailable(f"model server answered HTTP {exc.status_code}{_detail(exc)}") from None
    except openai.OpenAIError as exc:
        raise ModelUnavailable(f"model call failed: {type(exc).__name__}") from None
    except ModelUnavailable:
        raise
    except Exception as exc:  # e.g. a 200 whose body is not JSON: the fallback text still goes out
        raise ModelUnavailable(f"model answer unreadable: {type(exc).__name__}") from None
    text = _clean(text)
    if not text:
        raise ModelUnavailable("model returned no text")
    return text


def _complete(client: openai.OpenAI, model: str, messages: list[dict]) -> str:
    # The client's own POST (auth, timeout, error types) with a plain dict in and
    # out: `chat.completions.create` spends ~1.2 ms of CPU per call validating the
    # typed parameters and building pydantic models (profiled), a third of a
    # greeting's CPU for two strings we already know are well-formed.
    started = time.perf_counter()
    try:
        completion = client.post(
            "/chat/completions",
            body=_request(model, messages),
            cast_to=object,
        )
    except openai.APIStatusError as exc:
        metrics.provider_answered(PROVIDER, started, exc.status_code)
        metrics.provider_error(PROVIDER, exc.status_code)
        raise
    except openai.APIConnectionError as exc:  # APITimeoutError is one
        metrics.provider_unanswered(PROVIDER, started, "timeout" if isinstance(exc, openai.APITimeoutError) else "network_error")
        raise
    metrics.provider_answered(PROVIDER, started, 200)
    try:
        choice = completion["choices"][0]
        content = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise ModelUnavailable("model answered without a message") from None
    if not isinstance(content, str):
        raise ModelUnavailable("model answered with content that is not text")
    # "length": cut off mid-sentence at max_tokens; "content_filter": withheld. Other values
    # (compatible servers have their own, e.g. "eos_token") are taken at their word.
    finish_reason = choice.get("finish_reason") if isinstance(choice, dict) else None
    if finish_reason in ("length", "content_filter"):
        raise ModelUnavailable(f"model stopped early ({str(finish_reason)[:40]})")
    return content


def _request(model: str, messages: list[dict]) -> dict:
    body = {"model": model, "messages": messages, settings.OPENAI_MAX_TOKENS_PARAMETER: settings.OPENAI_MAX_TOKENS}
    if settings.OPENAI_TEMPERATURE is not None:
        body["temperature"] = settings.OPENAI_TEMPERATURE
    return body


_IDENTIFIER = re.compile(r"[A-Za-z0-9_.\-]{1,60}")


def _detail(exc: openai.APIStatusError) -> str:
    """The error's code and parameter, e.g. " (unsupported_parameter: max_tokens)", so whoever
    reads the timeline can tell a setting to change from an outage. Never the message: a
    server may echo part of the key there."""
    parts = [str(part) for part in (getattr(exc, "code", None), getattr(exc, "param", None))
             if part and _IDENTIFIER.fullmatch(str(part))]
    return f" ({': '.join(parts)})" if parts else ""


def _clean(text: str) -> str:
    """One paragraph, bounded: WhatsApp template parameters reject newlines and tabs."""
    return one_line(text.strip().strip('"'), MAX_GREETING_CHARS)
