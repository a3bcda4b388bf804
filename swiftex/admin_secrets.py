"""Credentials in admin: write-only for editors, "set" or "not set" for everyone else.

An editor's form shows each credential as an empty password box (the model
admin's form does that). A user with view permission only gets Django's
read-only page, which would print every field's value; for them each
credential is replaced by whether it is set.
"""

from __future__ import annotations

from functools import cache


class HiddenSecretsMixin:
    secret_fields: tuple[str, ...] = ()
    # Fieldsets only an editor can use (e.g. "Remove credentials"): left out of the read-only page.
    editor_only_fieldsets: tuple[str, ...] = ()

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        return [
            (name, {**options, "fields": [self._masked(field) for field in options["fields"]]})
            for name, options in fieldsets
            if name not in self.editor_only_fieldsets
        ]

    def _masked(self, field):
        if isinstance(field, (list, tuple)):
            return tuple(self._masked(item) for item in field)
        return _is_set(field) if field in self.secret_fields else field


@cache
def _is_set(field: str):
    def state(obj) -> str:
        return "set" if getattr(obj, field) else "not set"

    state.__name__ = f"{field}_state"
    state.short_description = field.replace("_", " ")
    return state
