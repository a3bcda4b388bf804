"""Fake OpenAI Chat Completions: `POST /openai/v1/chat/completions`."""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import time
from typing import Any

from aiohttp import web

from fakes.state import STATE, answer

NAME_LINE = re.compile(r"^[ \t]*Name:[ \t]*(\S.*?)[ \t]*$", re.MULTILINE | re.IGNORECASE)


def _error(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _text(content: Any) -> str:
    """Message content is a string or, in the newer form, a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _tokens(text: str) -> int:
    # Roughly OpenAI's "4 characters per token"; callers only need plausible, non-zero numbers.
    return max(1, (len(text) + 3) // 4)


def greeting(messages: list[Any]) -> str:
    last_user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    match = NAME_LINE.search(_text(last_user.get("content"))) if last_user else None
    name = match.group(1) if match else "there"
    return f"Hi {name}! Thanks for reaching out — a specialist will be with you shortly."


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    body, record = await state.receive_json("openai", request)

    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return await answer(request, record, 401, _error(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error", code="invalid_api_key",
        ))
    if not isinstance(body, dict):
        return await answer(request, record, 400, _error(
            "We could not parse the JSON body of your request.", "invalid_request_error"
        ))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return await answer(request, record, 400, _error(
            "Missing required parameter: 'messages'.", "invalid_request_error", "messages", "missing_required_parameter"
        ))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return await answer(request, record, 400, _error(
            "you must provide a model parameter", "invalid_request_error"
        ))

    await asyncio.sleep(config.model_latency_ms / 1000)
    if random.random() < config.model_error_rate:
        return await answer(request, record, 500, _error(
            "The server had an error while processing your request. Sorry about that!", "server_error"
        ))
    text = greeting(messages)
    prompt_tokens = sum(_tokens(_text(m.get("content"))) for m in messages if isinstance(m, dict))
    completion_tokens = _tokens(text)
    return await answer(request, record, 200, {
        "id": "chatcmpl-" + secrets.token_hex(15),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": "fp_fake",
    })


def add_routes(app: web.Application) -> None:
    app.router.add_post("/openai/v1/chat/completions", chat_completions)
