"""Meta Graph API client for Lead Ads: read one lead, list a form's leads.

GETs only, on the providers' shared session (conversations/providers/base.py):
a timeout on every call, no redirects, and every failure mapped to one
`ProviderError` that says whether retrying can help. A read has no side
effect, so unlike a send every network failure (refused, reset, timeout) is
transient. The page token goes in the query string, as Graph expects, and
is never logged: errors carry Meta's message and code only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime

import requests
from django.conf import settings

from conversations.providers.base import ProviderError, classify, session
from conversations.providers.whatsapp import graph_error
from swiftex import metrics

PROVIDER = "meta_graph"
LEAD_FIELDS = "id,created_time,field_data,form_id,ad_id,adset_id,campaign_id,campaign_name,is_organic,platform,custom_disclaimer_responses"
PAGE_SIZE = 100
# Graph error codes (https://developers.facebook.com/docs/graph-api/guides/error-handling/).
# Transient: unknown/temporary errors, app and user rate limits, page rate limits.
TRANSIENT_CODES = {1, 2, 4, 17, 32, 341, 613, 80001}
# Permanent: invalid parameter or id, permissions, expired or invalid token.
PERMANENT_CODES = {10, 100, 102, 104, 190, 200, 803}


@dataclass(frozen=True)
class Page:
    leads: list[dict]
    after: str | None  # the cursor of the next page, None on the last one


def fetch_lead(leadgen_id: str, *, token: str) -> dict:
    """The lead as Graph returns it: {"id", "created_time", "field_data": [...], "form_id", ...}."""
    data = _get(f"{settings.GRAPH_API_URL}/{leadgen_id}", {"access_token": token, "fields": LEAD_FIELDS})
    if not isinstance(data, dict) or not isinstance(data.get("field_data"), list):
        raise ProviderError(PROVIDER, "the lead came back without field_data", permanent=False)
    return data


def list_leads(form_id: str, *, token: str, since: datetime, after: str | None = None) -> Page:
    """One page of the form's leads created after `since`; follow `Page.after` for the next."""
    params = {
        "access_token": token,
        "fields": LEAD_FIELDS,
        "limit": str(PAGE_SIZE),
        "filtering": json.dumps([{"field": "time_created", "operator": "GREATER_THAN", "value": int(since.timestamp())}]),
    }
    if after:
        params["after"] = after
    data = _get(f"{settings.GRAPH_API_URL}/{form_id}/leads", params)
    leads = data.get("data") if isinstance(data, dict) else None
    if not isinstance(leads, list):
        raise ProviderError(PROVIDER, "the lead list came back without data", permanent=False)
    paging = data.get("paging") or {}
    # Only a `next` link means there is more; the cursor, not the link, is followed, so the
    # token is only ever sent to GRAPH_API_URL.
    after = (paging.get("cursors") or {}).get("after") if paging.get("next") else None
    return Page([lead for lead in leads if isinstance(lead, dict)], after or None)


def timeout() -> tuple[float, float]:
    return settings.PROVIDER_CONNECT_TIMEOUT_SECONDS, settings.META_GRAPH_TIMEOUT_SECONDS


def _get(url: str, params: dict) -> dict:
    started = time.perf_counter()
    try:
        response = session().get(url, params=params, timeout=timeout(), allow_redirects=False)
    except requests.RequestException as exc:
        outcome = "timeout" if isinstance(exc, requests.Timeout) else "network_error"
        metrics.provider_unanswered(PROVIDER, started, outcome)
        # Not str(exc): requests puts the URL, token included, in its messages.
        raise ProviderError(PROVIDER, f"{outcome.replace('_', ' ')}: {type(exc).__name__}", permanent=False) from None
    metrics.provider_answered(PROVIDER, started, response.status_code)
    if response.status_code == 200:
        try:
            return response.json()
        except ValueError:
            raise ProviderError(PROVIDER, "HTTP 200 with a body that is not JSON", permanent=False) from None
    raise error_from_response(response)


def error_from_response(response: requests.Response) -> ProviderError:
    error = graph_error(response)
    code = error.get("code")
    title = str(error.get("message") or f"HTTP {response.status_code}")
    if subcode := error.get("error_subcode"):
        title = f"{title} (subcode {subcode})"
    transient = set(TRANSIENT_CODES)
    if error.get("is_transient") is True and code is not None:
        transient.add(code)  # Graph's own verdict, for codes not listed above
    return classify(PROVIDER, response, code=code, title=title, permanent_codes=PERMANENT_CODES - transient, transient_codes=transient)
