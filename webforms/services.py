"""A web form submission: from posted fields to a lead, through the API's own validation and ingest.

`webform_submit()` turns what the visitor posted into the same body the API
takes, validates it with LeadSerializer (phones read in the organization's
region), adds what this form requires, and stores it with `lead_ingest()`.
Campaign tracking (utm_* and the page the form was on) is read from the
page's address when it is shown, carried in hidden inputs, and stored in the
lead's metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from leads.serializers import LeadSerializer
from leads.services import IngestResult, lead_ingest
from swiftex import metrics
from webforms.models import FIELDS, WebForm

UTM_PARAMS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
URL_PARAMS = ("page_url", "referrer")
TRACKING_PARAMS = UTM_PARAMS + URL_PARAMS
_MAX_UTM = 200
_MAX_URL = 2000
_MAX_CAMPAIGN = 128  # Lead.campaign


def tracking_from(params: Mapping[str, str], *, page_url: str = "", referrer: str = "") -> dict[str, str]:
    """The tracking values in `params` (a query string or a posted form), cleaned and bounded;
    `page_url` and `referrer` are used when `params` has none."""
    tracking = {name: " ".join(str(params.get(name, "")).replace("\x00", " ").split())[:_MAX_UTM] for name in UTM_PARAMS}
    tracking["page_url"] = _http_url(params.get("page_url", "")) or _http_url(page_url)
    tracking["referrer"] = _http_url(params.get("referrer", "")) or _http_url(referrer)
    return {name: value for name, value in tracking.items() if value}


def _http_url(value: str) -> str:
    value = str(value).strip()
    if len(value) > _MAX_URL or "\x00" in value or urlsplit(value).scheme not in ("http", "https"):
        return ""
    return value


@dataclass(frozen=True)
class Outcome:
    result: IngestResult | None = None
    errors: dict[str, list[str]] = field(default_factory=dict)  # by field name; "__all__" for the form as a whole


def lead_body(form: WebForm, posted: Mapping[str, str]) -> dict:
    """The API's body for this submission; also what is kept as the submission's raw payload."""
    tracking = tracking_from(posted)
    body: dict = {name: posted.get(name, "") for name in FIELDS if form.shows(name)}
    body["consent"] = posted.get("consent") == "yes"  # the unticked box is not posted at all
    body["source"] = form.source
    body["campaign"] = form.campaign or tracking.get("utm_campaign", "")[:_MAX_CAMPAIGN]
    body["metadata"] = {**tracking, "webform": form.slug}
    return body


def webform_submit(*, form: WebForm, posted: Mapping[str, str], received_at: datetime) -> Outcome:
    body = lead_body(form, posted)
    serializer = LeadSerializer(data=body, context={"phone_region": form.organization.phone_region})
    valid = serializer.is_valid()
    errors = _visible_errors(form, {} if valid else serializer.errors)
    for name in FIELDS:
        if form.requires(name) and not str(body.get(name, "")).strip():
            errors[name] = [f"Enter your {_NOUNS[name]}."]  # says more than "either phone or email"
    if errors:
        metrics.INGEST_REJECTED.labels(reason="invalid").inc()
        return Outcome(errors=errors)
    result = lead_ingest(org=form.organization, data=serializer.to_lead_input(), payload=body, received_at=received_at)
    metrics.LEADS_INGESTED.labels(outcome="created" if result.created else "deduplicated").inc()
    return Outcome(result=result)


_NOUNS = {"name": "name", "phone": "phone number", "email": "e-mail address", "message": "message"}


def _visible_errors(form: WebForm, serializer_errors: Mapping) -> dict[str, list[str]]:
    """Errors on the fields the visitor sees stay on them; anything else (a field this form does not
    show, the form's own settings) is an error of the form as a whole, named as such."""
    errors: dict[str, list[str]] = {}
    for name, messages in serializer_errors.items():
        messages = [str(message) for message in messages] if isinstance(messages, list) else [str(messages)]
        if name in FIELDS and form.shows(name):
            errors[name] = messages
        elif name in ("phone", "email"):
            continue  # "either phone or email" is also reported on the contact field that is shown
        else:
            errors.setdefault("__all__", []).extend(f"{name}: {message}" for message in messages)
    return errors
