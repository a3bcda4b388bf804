"""WhatsApp Cloud API: send a text or template message.

`POST {WHATSAPP_API_URL}/{phone_number_id}/messages` with the organization's
token. A 200 only means Meta accepted the message (we get its wamid); whether
it reached the phone comes later in status webhooks. `biz_opaque_callback_data`
carries our message id and comes back in every status webhook, so a status
can be matched to our row even if we never learned the wamid (a worker killed
between Meta's answer and our write).
"""

from __future__ import annotations

from django.conf import settings

from conversations.providers.base import ProviderError, Sent, classify, one_line, post

PROVIDER = "whatsapp"

# Meta error codes (https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes).
# Transient: throughput and pair rate limits, temporary and unknown errors.
TRANSIENT_CODES = {1, 2, 4, 80007, 130429, 131000, 131016, 131056, 133004}
# Permanent: not on WhatsApp, outside the 24 h window, template problems,
# expired/invalid token, account restricted, bad parameter, recipient blocked.
PERMANENT_CODES = {100, 190, 368, 131026, 131047, 131051, 131052, 132000, 132001, 132005, 132007, 132012, 131008, 131009, 131030, 131031}
UNDELIVERABLE = "131026"


def send_text(*, org, to: str, body: str, callback_data: str) -> Sent:
    return _send(org, {"to": _digits(to), "type": "text", "text": {"preview_url": False, "body": body}}, callback_data)


def send_template(*, org, to: str, name: str, language: str, parameter: str | None, callback_data: str) -> Sent:
    template: dict = {"name": name, "language": {"code": language}}
    if parameter is not None:
        template["components"] = [{"type": "body", "parameters": [{"type": "text", "text": template_parameter(parameter)}]}]
    return _send(org, {"to": _digits(to), "type": "template", "template": template}, callback_data)


# Meta refuses a body parameter with a newline, a tab or more than four spaces in a row
# (error 132000 family), and a template body over 1,024 characters in all.
MAX_PARAMETER_CHARS = 900


def template_parameter(text: str) -> str:
    """`text` as one line Meta accepts in a template: an admin's multi-line fallback
    text or a rep's message would otherwise turn every template send into a refusal."""
    return one_line(text, MAX_PARAMETER_CHARS)


def number_variants(e164: str) -> list[str]:
    """Other ways WhatsApp may write the same person's number in a webhook's `from`: a
    Brazilian mobile number with or without its ninth digit (55 + area + 9 + 8 digits), a
    Mexican one with or without the 1 after 52. A lead who typed one form writes back from
    the other; matched on the number alone they would be a stranger whose STOP is ignored."""
    digits = e164.lstrip("+")
    if digits.startswith("55") and len(digits) == 12 and digits[4] in "6789":  # a mobile; landlines start 2-5
        return [f"+{digits[:4]}9{digits[4:]}"]
    if digits.startswith("55") and len(digits) == 13 and digits[4] == "9":
        return [f"+{digits[:4]}{digits[5:]}"]
    if digits.startswith("521") and len(digits) == 13:
        return [f"+52{digits[3:]}"]
    if digits.startswith("52") and len(digits) == 12:
        return [f"+521{digits[2:]}"]
    return []


def is_configured(org) -> bool:
    return bool(org.whatsapp_phone_number_id and org.whatsapp_access_token)


def _digits(e164: str) -> str:
    return e164.lstrip("+")


def _send(org, message: dict, callback_data: str) -> Sent:
    url = f"{settings.WHATSAPP_API_URL}/{org.whatsapp_phone_number_id}/messages"
    payload = {"messaging_product": "whatsapp", "recipient_type": "individual", **message, "biz_opaque_callback_data": callback_data}
    response = post(PROVIDER, url, json=payload, headers={"Authorization": f"Bearer {org.whatsapp_access_token}"})
    if response.status_code == 200:
        try:
            return Sent(response.json()["messages"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            # Meta said yes but we cannot read the wamid: it may well be on its
            # way, so do not resend; the status webhook will name it.
            raise ProviderError(PROVIDER, "accepted without a readable message id", permanent=False, maybe_delivered=True) from None
    raise error_from_response(response)


def graph_error(response) -> dict:
    """The `error` object of a Graph API answer (WhatsApp, Lead Ads), or {} when there is none."""
    try:
        data = response.json()
    except ValueError:
        data = {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def error_from_response(response) -> ProviderError:
    error = graph_error(response)
    code = error.get("code")
    title = error.get("message") or error.get("error_user_title") or f"HTTP {response.status_code}"
    details = (error.get("error_data") or {}).get("details")
    if details and details not in title:
        title = f"{title} ({details})"
    return classify(PROVIDER, response, code=code, title=title, permanent_codes=PERMANENT_CODES, transient_codes=TRANSIENT_CODES)
