"""Shared HTTP API plumbing: one error body shape and the request-body guards.

Every error answers `{"detail": "<summary>", "errors": {"<field>": ["<message>"]}}`
so clients can show the message next to the field that caused it.
"""

from __future__ import annotations

from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

JSON_MEDIA_TYPES = {"application/json"}


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
