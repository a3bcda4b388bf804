"""Writes for leads: organizations, API keys, and lead ingest.

`lead_ingest()` is the only way a lead enters the system. Atomically (one
statement for a new person, one transaction for a known one) it upserts the
Contact, opens or reuses the open Lead, records the Submission with its raw
payload, writes the timeline and, when a lead was opened, the `lead.created`
outbox row; the SQL is in leads/ingest_sql.py. Every "does it exist yet?"
question is answered by a unique constraint through `INSERT … ON CONFLICT`,
never by a read followed by a write, so concurrent submissions of one person
cannot create two of anything. An organization that routes leads assigns a
new lead in the same transaction (routing/services.py).
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from leads import ingest_sql
from leads.models import ApiKey, Contact, Lead, Organization, Submission
from routing import services as routing
from swiftex.db import prepared_cursor
from swiftex.events import emit

logger = logging.getLogger(__name__)

_OPEN_STATUSES_SQL = ", ".join(f"'{status}'" for status in Lead.OPEN_STATUSES)
_MAX_ATTEMPTS = 3
SUBMISSION_EXTERNAL_ID_CONSTRAINT = "submission_external_id_per_source"


@dataclass(frozen=True)
class LeadInput:
    """A validated, normalized submission (see leads/serializers.py)."""

    source: str
    name: str = ""
    phone: str | None = None  # E.164
    email: str | None = None  # lower-cased
    campaign: str = ""
    external_id: str | None = None
    message: str = ""
    consent: bool = False
    metadata: dict = field(default_factory=dict)
    # When the person gave that consent, if not now (a Meta lead: its created_time). It restores
    # consent an opt-out (STOP) revoked only if given after the opt-out.
    consent_given_at: datetime | None = None


@dataclass(frozen=True)
class IngestResult:
    lead_id: int
    contact_id: int
    submission_id: int
    status: str
    captured_at: datetime
    created: bool  # this submission opened the lead
    duplicate_submission: bool = False  # same external_id seen before: nothing new stored
    promoted: bool = False  # an imported lead became a hot lead with this submission (created is True too)

    @property
    def deduplicated(self) -> bool:
        return not self.created


class _LostRace(Exception):
    """A row we conflicted with vanished before we could read it (deleted/closed); retry."""


# --- Organizations and keys ---------------------------------------------------


def organization_defaults() -> dict:
    """Field values a new organization starts with, from the environment."""
    return {
        "phone_region": settings.LEADS_DEFAULT_PHONE_REGION,
        "ingest_rate_per_minute": settings.LEADS_DEFAULT_RATE_PER_MINUTE,
        "whatsapp_phone_number_id": settings.WHATSAPP_PHONE_NUMBER_ID,
        "whatsapp_access_token": settings.WHATSAPP_ACCESS_TOKEN,
        "whatsapp_app_secret": settings.WHATSAPP_APP_SECRET,
        "whatsapp_verify_token": settings.WHATSAPP_VERIFY_TOKEN,
        "twilio_account_sid": settings.TWILIO_ACCOUNT_SID,
        "twilio_auth_token": settings.TWILIO_AUTH_TOKEN,
        "twilio_from_number": settings.TWILIO_FROM_NUMBER,
        "hubspot_access_token": settings.HUBSPOT_ACCESS_TOKEN,
        "crm_adapter": "hubspot" if settings.HUBSPOT_ACCESS_TOKEN else "",
    }


@transaction.atomic
def organization_create(*, name: str, **fields) -> tuple[Organization, str]:
    """Create an organization and its first API key; returns the raw key (shown once)."""
    org = Organization(name=name, **{**organization_defaults(), **fields})
    org.full_clean()
    org.save()
    _, raw_key = ApiKey.issue(org, name="initial")
    return org, raw_key


# --- Lead ingest ----------------------------------------------------------------


def lead_ingest(
    *, org: Organization, data: LeadInput, payload: dict, received_at: datetime | None = None, imported: bool = False,
    route_later: list | None = None,
) -> IngestResult:
    """Store one submission. `imported` (a CSV list row): a lead it opens is flagged,
    raises no `lead.created` (the import announces its leads in batches) and is not
    routed: reps are not paged for every row of a list. `route_later` (a batch, inside its
    transaction): the lead is added to it, to be routed by `route_batch` before the commit."""
    received_at = received_at or timezone.now()
    if imported or not routing.routes_leads(org):
        return _ingest(org, data, payload, received_at, imported)
    if route_later is not None:
        result = _ingest(org, data, payload, received_at, imported)
        if result.created:  # a known person's open lead keeps its owner
            route_later.append((data, result, received_at))
        return result
    # The lead and its owner commit together (routing/services.py).
    with transaction.atomic():
        result = _ingest(org, data, payload, received_at, imported)
        _route(org, data, result, received_at)
    return result


def route_batch(org: Organization, pending: list) -> None:
    """Route a batch's new leads once they are stored, team by team. Every team the batch
    needs is locked first, in id order, so no rep's row (a capacity limit) is ever held while
    waiting for a team: two batches, or a batch and a live lead, cannot deadlock, and a live
    lead waits for a team's lock only while the batch routes, not while it stores."""
    keyed = [(routing.matched_team(org, source=data.source, campaign=data.campaign, phone=data.phone, metadata=data.metadata),
              index, (data, result, received_at)) for index, (data, result, received_at) in enumerate(pending)]
    keyed.sort(key=lambda item: item[:2])  # by team, and in storing order within a team
    routing.lock_teams({team for team, _, _ in keyed} - {0})
    for _, _, (data, result, received_at) in keyed:
        _route(org, data, result, received_at)


def _route(org: Organization, data: LeadInput, result: IngestResult, received_at: datetime) -> None:
    # A promoted list lead may have been given an owner by hand already; it keeps them.
    if result.created and not (result.promoted and routing.has_assignment(result.lead_id)):
        routing.assign_new_lead(
            org=org, lead_id=result.lead_id, source=data.source, campaign=data.campaign, phone=data.phone,
            metadata=data.metadata, contact_label=data.name or data.phone or data.email or "", now=received_at,
        )


def _ingest(org: Organization, data: LeadInput, payload: dict, received_at: datetime, imported: bool) -> IngestResult:
    params = _statement_params(org, data, payload, received_at) | {"imported": imported}
    for attempt in range(1, _MAX_ATTEMPTS + 1):
        try:
            return _ingest_new_contact(params) or _ingest_known_contact(org, data, params)
        except _LostRace:
            logger.info("lead ingest for org %s lost a race (attempt %d); retrying", org.pk, attempt)
        except IntegrityError as exc:
            if _violated_constraint(exc) != SUBMISSION_EXTERNAL_ID_CONSTRAINT:
                raise
            return _existing_submission(org, data)
    raise RuntimeError(f"lead ingest for org {org.pk} kept losing races after {_MAX_ATTEMPTS} attempts")


def _statement_params(org: Organization, data: LeadInput, payload: dict, now: datetime) -> dict:
    return {
        "org": org.pk,
        "name": data.name,
        "phone": data.phone,
        "email": data.email,
        "consent": data.consent,
        "consent_at": now if data.consent else None,
        "source": data.source,
        "campaign": data.campaign,
        "external_id": data.external_id,
        "message": data.message,
        "routing": json.dumps({"metadata": data.metadata} if data.metadata else {}),
        "payload": json.dumps(payload),
        "now": now,
        "now_iso": now.isoformat(),
    }


def _ingest_new_contact(params: dict) -> IngestResult | None:
    """The one-statement path; None when the phone or email is already known."""
    # Inside a caller's transaction (Idempotency-Key) a failed statement would
    # poison it, so guard with a savepoint there; alone, the statement is atomic.
    scope = transaction.atomic() if connection.in_atomic_block else nullcontext()
    with scope, prepared_cursor() as cursor:
        cursor.execute(ingest_sql.NEW_CONTACT, params)
        row = cursor.fetchone()
    if row is None:
        return None
    submission_id, lead_id, contact_id, _wakeups = row
    return IngestResult(lead_id, contact_id, submission_id, Lead.Status.NEW, params["now"], created=True)


def _ingest_known_contact(org: Organization, data: LeadInput, params: dict) -> IngestResult:
    with transaction.atomic(), prepared_cursor() as cursor:
        contact_id, enriched = _find_and_enrich_contact(cursor, org, data, params["now"], params["imported"])
        lead_id, status, captured_at, created, promoted = _open_or_reuse_lead(cursor, contact_id, params)
        cursor.execute(ingest_sql.KNOWN_LEAD, {**params, "lead_id": lead_id, "contact_id": contact_id, "created": created})
        submission_id = cursor.fetchone()[0]
        if enriched and not created:  # a new lead's own event already says so
            emit("contact.updated", organization_id=org.pk, data={"contact_id": contact_id, "lead_id": lead_id})
    return IngestResult(lead_id, contact_id, submission_id, status, captured_at, created, promoted=promoted)


def _violated_constraint(exc: IntegrityError) -> str | None:
    diag = getattr(exc.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)


def _find_and_enrich_contact(cursor, org: Organization, data: LeadInput, now: datetime, imported: bool) -> tuple[int, bool]:
    """The contact that owns this phone or email (phone wins: it is what we message), and
    whether this submission added to it (a name, consent, the missing phone or email)."""
    table = Contact._meta.db_table
    cursor.execute(
        f"SELECT id, phone, email FROM {table} WHERE organization_id = %s AND (phone = %s OR email = %s) "
        "ORDER BY (phone IS NOT DISTINCT FROM %s) DESC LIMIT 1",
        [org.pk, data.phone, data.email, data.phone],
    )
    row = cursor.fetchone()
    if row is None:
        raise _LostRace  # the conflicting contact went away; start over
    contact_id, phone, email = row
    # Fill what the contact lacks; touch the row only when something changes,
    # so repeat submissions do not queue on its row lock. An opt-in restores consent
    # only if given after the contact's last opt-out (an imported list: never).
    given = None if imported else (data.consent_given_at or now)
    restores = "(%(consent)s AND (consent_revoked_at IS NULL OR COALESCE(consent_revoked_at < %(given)s, FALSE)))"
    cursor.execute(
        f"UPDATE {table} SET name = CASE WHEN name = '' THEN %(name)s ELSE name END, "
        f"consent = consent OR {restores}, consent_at = CASE WHEN NOT consent AND {restores} THEN %(now)s ELSE consent_at END, "
        f"updated_at = %(now)s WHERE id = %(id)s AND ((name = '' AND %(name)s <> '') OR (NOT consent AND {restores}))",
        {"name": data.name, "consent": data.consent, "given": given, "now": now, "id": contact_id},
    )
    enriched = cursor.rowcount > 0
    return contact_id, _fill_missing_identity(cursor, table, org, contact_id, phone, email, data, now) or enriched


def _fill_missing_identity(cursor, table, org, contact_id, phone, email, data: LeadInput, now) -> bool:
    """Add the phone or email the contact lacks, unless another contact already owns it; whether it did."""
    if phone and not email and data.email:
        column, value = "email", data.email
    elif email and not phone and data.phone:
        column, value = "phone", data.phone
    else:
        return False
    # Rare path, guarded by a savepoint: a concurrent claim of the same value
    # loses to the unique key instead of failing the whole submission.
    try:
        with transaction.atomic():
            cursor.execute(
                f"UPDATE {table} SET {column} = %s, updated_at = %s WHERE id = %s AND {column} IS NULL "
                f"AND NOT EXISTS (SELECT 1 FROM {table} WHERE organization_id = %s AND {column} = %s)",
                [value, now, contact_id, org.pk, value],
            )
            return cursor.rowcount > 0
    except IntegrityError as exc:
        logger.info("contact %s keeps its %s unset: %s", contact_id, column, type(exc).__name__)
        return False


def _open_or_reuse_lead(cursor, contact_id: int, params: dict):
    table = Lead._meta.db_table
    cursor.execute(
        f"INSERT INTO {table} (organization_id, contact_id, status, source, campaign, routing, captured_at, imported, created_at) "
        "VALUES (%(org)s, %(contact_id)s, 'new', %(source)s, %(campaign)s, %(routing)s::jsonb, %(now)s, %(imported)s, %(now)s) "
        f"ON CONFLICT (contact_id) WHERE status IN ({_OPEN_STATUSES_SQL}) DO NOTHING RETURNING id, status, captured_at",
        {**params, "contact_id": contact_id},
    )
    row = cursor.fetchone()
    if row:
        return row[0], row[1], row[2], True, False
    cursor.execute(
        f"SELECT id, status, captured_at, imported FROM {table} WHERE contact_id = %s AND status IN ({_OPEN_STATUSES_SQL})",
        [contact_id],
    )
    row = cursor.fetchone()
    if row is None:
        raise _LostRace  # closed between our insert and our read
    lead_id, status, captured_at, listed = row
    if listed and not params["imported"] and (promoted_at := _promote_imported(cursor, lead_id, params["now"])):
        return lead_id, status, promoted_at, True, True
    return lead_id, status, captured_at, False, False


def _promote_imported(cursor, lead_id: int, now: datetime) -> datetime | None:
    """A person from an imported list submitted live: their lead becomes a hot lead now,
    announced as created (greeted, routed, counted). Only one concurrent submission wins."""
    cursor.execute(
        f"UPDATE {Lead._meta.db_table} SET imported = false, captured_at = %s WHERE id = %s AND imported RETURNING captured_at",
        [now, lead_id],
    )
    row = cursor.fetchone()
    return row[0] if row else None


def _existing_submission(org: Organization, data: LeadInput) -> IngestResult:
    submission = (
        Submission.objects.select_related("lead")
        .only("id", "contact_id", "lead__id", "lead__status", "lead__captured_at")
        .get(organization=org, source=data.source, external_id=data.external_id)
    )
    lead = submission.lead
    return IngestResult(lead.pk, submission.contact_id, submission.pk, lead.status, lead.captured_at, created=False, duplicate_submission=True)
