"""A Graph lead, read through its form's mapping, as the body `LeadSerializer` validates.

Pure functions: no database, no HTTP. Every answer ends up somewhere: a lead
field, the lead's metadata, or (mapped to "ignore") only the raw payload that
the submission keeps anyway.
"""

from __future__ import annotations

from datetime import datetime, timezone

from metaleads.models import METADATA_KEY_RE, MetaLeadForm

NAME_MAX = 200
CAMPAIGN_MAX = 128


def answers(lead: dict) -> dict[str, list[str]]:
    """{question name: [values]} from `field_data`, in Meta's order."""
    out: dict[str, list[str]] = {}
    for item in lead.get("field_data") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        values = item.get("values") or []
        out[item["name"]] = [str(v) for v in (values if isinstance(values, list) else [values]) if v is not None]
    return out


def lead_body(lead: dict, form: MetaLeadForm, *, page_id: str) -> dict:
    """The submission body for LeadSerializer: name, phone, email, message, source, campaign, consent, metadata."""
    given = answers(lead)
    mapping = form.effective_mapping()
    fields: dict[str, str] = {}
    metadata: dict[str, object] = {}
    for question, values in given.items():
        target = mapping.get(question, "metadata")
        value = ", ".join(v.strip() for v in values if v.strip())
        if target == "ignore" or not value:
            continue
        if target == "metadata" or (key := METADATA_KEY_RE.match(target)):
            metadata[question if target == "metadata" else key.group(1)] = value
        else:
            fields.setdefault(target, value)  # the first non-empty answer wins (email before work_email)
    name = fields.get("name") or " ".join(filter(None, (fields.get("first_name"), fields.get("last_name"))))
    metadata.update({
        f"meta_{key}": str(lead[key]) for key in ("form_id", "ad_id", "adset_id", "campaign_id", "platform") if lead.get(key)
    })
    metadata["meta_leadgen_id"] = str(lead.get("id", ""))
    metadata["meta_page_id"] = page_id
    if created := lead.get("created_time"):
        metadata["meta_created_time"] = str(created)
    return {
        "name": name[:NAME_MAX],
        "phone": fields.get("phone") or None,
        "email": fields.get("email") or None,
        "message": fields.get("message", ""),
        "source": form.source,
        "campaign": (form.campaign or str(lead.get("campaign_name") or ""))[:CAMPAIGN_MAX],
        "external_id": str(lead.get("id", "")),
        "consent": consented(lead, form, given),
        "metadata": metadata,
    }


def consented(lead: dict, form: MetaLeadForm, given: dict[str, list[str]] | None = None) -> bool:
    """Opt-in to WhatsApp/SMS as the form's consent rule says; no rule, no consent."""
    if form.consent == MetaLeadForm.Consent.FORM:
        return True
    if form.consent != MetaLeadForm.Consent.QUESTION or not form.consent_question:
        return False
    given = answers(lead) if given is None else given
    values = given.get(form.consent_question)
    if values is None:
        # Custom disclaimer checkboxes come apart from the questions: {"checkbox_key", "is_checked": "1"}.
        for box in lead.get("custom_disclaimer_responses") or []:
            if isinstance(box, dict) and box.get("checkbox_key") == form.consent_question:
                values = [str(box.get("is_checked", ""))]
    accepted = form.consent_answer_set()
    return bool(values) and all(v.strip().lower() in accepted for v in values)


def created_at(lead: dict) -> datetime | None:
    """Meta's `created_time` ("2026-11-25T08:00:00+0000", or unix seconds in webhooks)."""
    value = lead.get("created_time")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if isinstance(value, str):
        if value.isdigit():
            return datetime.fromtimestamp(int(value), tz=timezone.utc)
        try:
            return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z")
        except ValueError:
            return None
    return None
