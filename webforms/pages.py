"""What the form template shows for each field: label, input type, value, hint and errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from webforms.models import FIELDS, WebForm


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    input_type: str  # "textarea" for the message
    autocomplete: str
    maxlength: int  # LeadSerializer's limits
    required: bool
    value: str
    errors: list[str]
    hint: str = ""

    @property
    def id(self) -> str:
        return f"id_{self.name}"

    @property
    def describedby(self) -> str:
        ids = ([f"{self.id}-hint"] if self.hint else []) + ([f"{self.id}-error"] if self.errors else [])
        return " ".join(ids)


_SPECS = {
    "name": ("Your name", "text", "name", 200, ""),
    "phone": ("Mobile phone", "tel", "tel", 40, "For a number from abroad, start with + and the country code."),
    "email": ("E-mail", "email", "email", 254, ""),
    "message": ("Message", "textarea", "off", 5000, ""),
}


def form_fields(form: WebForm, values: Mapping[str, str], errors: Mapping[str, list[str]]) -> list[Field]:
    fields = []
    for name in FIELDS:
        if not form.shows(name):
            continue
        label, input_type, autocomplete, maxlength, hint = _SPECS[name]
        fields.append(Field(name, label, input_type, autocomplete, maxlength, form.requires(name), str(values.get(name, "")),
                            list(errors.get(name, [])), hint))
    return fields
