"""Shared HTTP API plumbing: one error body shape and the request-body guards.

Every error answers `{"detail": "<summary>", "errors": {"<field>": ["<message>"]}}`
so clients can show the message next to the field that caused it.
"""

from __future__ import annotations

import math

from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

JSON_MEDIA_TYPES = {"application/json"}
# Deeper than any lead's metadata needs; PostgreSQL and json would take more, a reader would not.
MAX_JSON_DEPTH = 20


class LengthRequired(exceptions.APIException):
    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_detail = "Send the body with a Content-Length header (chunked request bodies are not read)."
    default_code = "length_required"


def unstorable(value: object, path: str = "", depth: int = 0) -> tuple[str, str] | None:
    """(where, what) for the first thing in parsed JSON that PostgreSQL would refuse to store,
    else None: NUL characters and unpaired surrogates in text (keys too), numbers too large
    for a float (`1e400` reads as infinity), nesting deeper than MAX_JSON_DEPTH."""
    if isinstance(value, str):
        return _unstorable_text(value, path)
    if isinstance(value, float) and not math.isfinite(value):
        return path, "number too large"
    if isinstance(value, (dict, list)) and depth >= MAX_JSON_DEPTH:
        return path, f"nested more than {MAX_JSON_DEPTH} levels deep"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        if found := (isinstance(key, str) and _unstorable_text(key, where)) or unstorable(item, where, depth + 1):
            return found
    return None


def _unstorable_text(text: str, path: str) -> tuple[str, str] | None:
    if "\x00" in text:
        return path.replace("\x00", "\\u0000"), "text may not contain NUL characters (\\u0000)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # the path too may hold one: escaped, or the error could not be sent
            return path.encode("utf-8", "backslashreplace").decode(), "text may not contain unpaired surrogates (\\ud800-\\udfff)"
    return None


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


def guard_json_body(request, *, max_bytes: int) -> None:
    """Refuse a non-JSON or oversized body before anything reads it."""
    media_type = (request.content_type or "").split(";")[0].strip().lower()
    if media_type not in JSON_MEDIA_TYPES:
        raise exceptions.UnsupportedMediaType(
            media_type or "(none)", detail=f"Content-Type must be application/json, not {media_type or 'missing'!r}."
        )
    if not request.META.get("CONTENT_LENGTH") and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        raise LengthRequired()
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise exceptions.ParseError("Content-Length is not a number.") from None
    if length > max_bytes:
        raise PayloadTooLarge(f"Request body is {length} bytes; the limit is {max_bytes} bytes.")


def json_object(request) -> dict:
    data = request.data
    if not isinstance(data, dict):
        raise exceptions.ValidationError({"body": [f"Must be a JSON object, not a JSON {_json_type(data)}."]})
    return data


def _json_type(value) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}.get(type(value), "value")


def exception_handler(exc, context):
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        fields = ", ".join(sorted(errors))
        response.data = {"detail": f"Invalid input: {fields}.", "errors": errors}
    elif isinstance(exc, exceptions.ParseError):
        message = str(exc.detail).replace("JSON parse error - ", "Malformed JSON: ")
        response.data = {"detail": message, "errors": {"body": [message]}}
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        response.data = {"detail": str(detail), "errors": {}}
    return response


def error_response(status_code: int, detail: str, errors: dict | None = None, headers: dict | None = None) -> Response:
    return Response({"detail": detail, "errors": errors or {}}, status=status_code, headers=headers)
