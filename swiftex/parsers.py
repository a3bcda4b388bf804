"""The API's request parser (DRF's DEFAULT_PARSER_CLASSES).

Its own module: DRF reads the setting while `rest_framework.views` is imported,
so the class cannot live beside the views' helpers in swiftex/api.py.
"""

from __future__ import annotations

from rest_framework import exceptions, parsers


class JSONParser(parsers.JSONParser):
    """DRF's, with a few KB of nested brackets answered 400 instead of a RecursionError's 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
