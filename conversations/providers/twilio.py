"""Twilio Programmable Messaging: send an SMS, verify Twilio's signatures.

`POST {TWILIO_API_URL}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded,
HTTP basic auth. The status callback URL carries our message id, so Twilio's
callbacks can be matched to our row even before we stored the MessageSid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from conversations.providers.base import ProviderError, Sent, classify, post

PROVIDER = "twilio"

# https://www.twilio.com/docs/api/errors. Permanent: invalid/unreachable "To",
# unsubscribed recipient, not SMS-capable, region not enabled, bad credentials,
# blocked content. 20429 / 14107 are rate limits (transient).
PERMANENT_CODES = {20003, 20404, 21211, 21212, 21408, 21602, 21604, 21606, 21610, 21612, 21614, 21617, 30004, 30005, 30006, 30007}
TRANSIENT_CODES = {20429, 14107, 20500, 20503, 30001, 30008}


def send_sms(*, org, to: str, body: str, status_callback: str) -> Sent:
    url = f"{settings.TWILIO_API_URL}/2010-04-01/Accounts/{org.twilio_account_sid}/Messages.json"
    form = {"To": to, "From": org.twilio_from_number, "Body": body, "StatusCallback": status_callback}
    response = post(PROVIDER, url, data=form, auth=(org.twilio_account_sid, org.twilio_auth_token))
    if response.status_code in (200, 201):
        try:
            return Sent(response.json()["sid"])
        except (ValueError, KeyError, TypeError):
            raise ProviderError(PROVIDER, "accepted without a readable MessageSid", permanent=False, maybe_delivered=True) from None
    raise error_from_response(response)


def is_configured(org) -> bool:
    return bool(org.twilio_account_sid and org.twilio_auth_token and org.twilio_from_number)


def error_from_response(response) -> ProviderError:
    try:
        error = response.json()
    except ValueError:
        error = {}
    code = error.get("code") if isinstance(error, dict) else None
    title = (error.get("message") if isinstance(error, dict) else None) or f"HTTP {response.status_code}"
    return classify(PROVIDER, response, code=code, title=title, permanent_codes=PERMANENT_CODES, transient_codes=TRANSIENT_CODES)


def signature(auth_token: str, url: str, params: dict[str, list[str]] | dict[str, str]) -> str:
    """Twilio's request signature: base64 HMAC-SHA1 of the URL followed by each
    POST parameter's name and value, sorted by name."""
    payload = url
    for name in sorted(params):
        values = params[name]
        for value in (sorted(set(values)) if isinstance(values, list) else [values]):  # repeats once, as Twilio's SDK
            payload += name + value
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_valid(auth_token: str, url: str, params, provided: str) -> bool:
    """Twilio signs the URL with or without the default port depending on the product, so
    (as its own RequestValidator does) both forms are accepted."""
    if not auth_token or not provided:
        return False
    return any(hmac.compare_digest(signature(auth_token, form, params).encode(), provided.encode()) for form in _port_forms(url))


def _port_forms(url: str) -> set[str]:
    """`url` as given, without its port, and with the scheme's default port if it had none."""
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    found = re.fullmatch(r"(\[[^\]]*\]|[^:]*)(?::(\d*))?", hostport)
    if found is None:
        return {url}
    host, port = found.groups()
    prefix = f"{userinfo}@" if userinfo else ""
    forms = {url, urlunsplit(parts._replace(netloc=prefix + host))}
    default = {"https": "443", "http": "80"}.get(parts.scheme)
    if not port and default:
        forms.add(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    return forms
