"""CSV import: upload, check (dry run), import, stop.

Both phases run on the bulk lane (imports/tasks.py) as `work(import_id)`: one
task parses the file once and then does chunk after chunk, each chunk one
transaction that locks the import row, re-reads the cursor, handles the rows
after it and moves the cursor past them, so no row is done twice. One task
chain works an import at a time (`work`): picking a stalled import up again
starts a new chain, and a late slice of the old one stops. Every row goes through `LeadSerializer` and `lead_ingest` like an API
submission, flagged `imported`: a lead it opens is not greeted, routed or
counted as speed-to-lead. Each chunk raises one `lead.imported` event (the
leads it opened, and whether the admin asked to greet them), so a list never
sits in the first-touch lane ahead of live leads. The pace is capped
(IMPORT_ROWS_PER_SECOND) because live leads share the machine.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DataError, IntegrityError, transaction
from django.utils import timezone

from imports import csvfile
from imports.models import LeadImport, RowError
from leads.models import Organization
from leads.serializers import LeadSerializer
from leads.services import lead_ingest
from swiftex import events

logger = logging.getLogger(__name__)

PREVIEW_ROWS = 10


class ImportRefused(ValueError):
    """The upload or the request cannot be accepted; the message says why."""


# --- Upload and settings (the admin's steps) ------------------------------------------------


def upload(*, organization: Organization, file_name: str, raw: bytes, user=None, **options) -> LeadImport:
    if len(raw) > settings.IMPORT_MAX_BYTES:
        raise ImportRefused(f"The file is {len(raw):,} bytes; the limit is {settings.IMPORT_MAX_BYTES:,} (IMPORT_MAX_BYTES).")
    try:
        text = csvfile.decode(raw)
        delimiter = csvfile.sniff_delimiter(text)
        headers = csvfile.read_header(text, delimiter)
        total = csvfile.count_rows(text, delimiter)
    except csvfile.CsvError as exc:
        raise ImportRefused(str(exc)) from None
    if total == 0:
        raise ImportRefused("The file has a header row but no rows under it.")
    if total > settings.IMPORT_MAX_ROWS:
        raise ImportRefused(f"The file has {total:,} rows; the limit is {settings.IMPORT_MAX_ROWS:,} (IMPORT_MAX_ROWS). Split it.")
    lead_import = LeadImport(
        organization=organization, created_by=user, file_name=file_name[:255], content=text, delimiter=delimiter,
        headers=headers, mapping=csvfile.guess_mapping(headers), rows_total=total, **options,
    )
    lead_import.full_clean()
    lead_import.save()
    return lead_import


def start(lead_import: LeadImport, phase: str, *, mapping: list[str] | None = None) -> None:
    """Begin the check (dry run) or the import, with this column mapping. The task is queued on commit."""
    from imports.tasks import work

    with transaction.atomic():
        locked = LeadImport.objects.select_for_update().defer("content").get(pk=lead_import.pk)
        if locked.status not in (LeadImport.Status.UPLOADED, LeadImport.Status.CHECKED):
            raise ImportRefused(f"This import is {locked.get_status_display().lower()}; it cannot be started again.")
        mapping = mapping if mapping is not None else locked.mapping
        if problems := csvfile.mapping_problems(mapping):
            raise ImportRefused(" ".join(problems))
        if mapping != locked.mapping or phase == LeadImport.Status.CHECKING:
            RowError.objects.filter(lead_import=locked).delete()  # errors of another mapping no longer hold
        chain = locked.chain + 1  # a slice of the check still queued stops instead of working the import
        LeadImport.objects.filter(pk=locked.pk).update(
            mapping=mapping, status=phase, cursor=0, valid_rows=0, invalid_rows=0, heartbeat_at=timezone.now(), chain=chain,
            **({"preview": []} if phase == LeadImport.Status.CHECKING else {}),
        )
        transaction.on_commit(lambda: work.apply_async(kwargs={"import_id": locked.pk, "chain": chain}))


def stop(lead_import: LeadImport) -> bool:
    """Stop a running import after its current chunk; what is imported stays."""
    return bool(LeadImport.objects.filter(pk=lead_import.pk, status__in=LeadImport.RUNNING).update(
        status=LeadImport.Status.CANCELLED, finished_at=timezone.now(),
    ))


# --- The work (bulk lane) ---------------------------------------------------------------------


@dataclass
class _Chunk:
    valid: int = 0
    invalid: int = 0
    created: int = 0
    existing: int = 0


def work(import_id: int, *, chain: int | None = None, claim: bool = False, budget_seconds: float | None = None) -> int | None:
    """Do chunks of the current phase for up to `budget_seconds`.

    Returns the chain to queue the next slice with, or None when this chain is done: the
    phase ended, the import was stopped, or another chain has it. One chain works an import
    at a time (`LeadImport.chain`): a slice of another chain stops, so a slice that was only
    late (queued behind a bulk backlog) cannot run beside the one that picked the import up
    again, and the pace holds. `claim` (resume_stalled) takes the import over only if it is
    still stalled when the task runs. `chain` None: whichever chain it is (the tests).
    """
    budget = settings.IMPORT_SLICE_SECONDS if budget_seconds is None else budget_seconds
    lead_import = LeadImport.objects.filter(pk=import_id).first()
    if lead_import is None or not lead_import.running:
        return None
    if claim:
        chain = _claim(import_id)
    elif chain is None:
        chain = lead_import.chain
    elif chain != lead_import.chain:
        return None
    if chain is None:
        return None
    importing = lead_import.status == LeadImport.Status.IMPORTING
    pace = settings.IMPORT_ROWS_PER_SECOND if importing else settings.IMPORT_CHECK_ROWS_PER_SECOND
    cells = csvfile.stored_rows(lead_import.content, lead_import.delimiter)
    started = time.monotonic()
    while time.monotonic() - started < budget:
        chunk_started = time.monotonic()
        more, done = _chunk(import_id, lead_import.status, chain, cells)
        if not more:
            return None
        time.sleep(max(0.0, done / pace - (time.monotonic() - chunk_started)))
    return chain


def _claim(import_id: int) -> int | None:
    """Take over a stalled import: its new chain, or None if it moved meanwhile (its own slice came)."""
    cutoff = timezone.now() - timedelta(seconds=settings.IMPORT_STALL_SECONDS)
    with transaction.atomic():
        lead_import = LeadImport.objects.select_for_update().defer("content").filter(
            pk=import_id, status__in=LeadImport.RUNNING, heartbeat_at__lt=cutoff).first()
        if lead_import is None:
            return None
        lead_import.chain += 1
        lead_import.heartbeat_at = timezone.now()  # picked up: not stalled, so no second claim
        lead_import.save(update_fields=["chain", "heartbeat_at"])
    logger.info("import %s picked up again (chain %s)", import_id, lead_import.chain)
    return lead_import.chain


def _chunk(import_id: int, phase: str, chain: int, cells: list[tuple[int, list[str]]]) -> tuple[bool, int]:
    """One transaction: the rows after the cursor, up to IMPORT_CHUNK_ROWS. (more to do, rows done)."""
    with transaction.atomic():
        lead_import = LeadImport.objects.select_for_update().defer("content").get(pk=import_id)
        if lead_import.status != phase or lead_import.chain != chain:
            return False, 0  # stopped, the other phase began, or another chain has it
        batch = cells[lead_import.cursor:lead_import.cursor + settings.IMPORT_CHUNK_ROWS]
        counts, lead_ids = _rows(lead_import, batch, ingest=phase == LeadImport.Status.IMPORTING)
        lead_import.cursor += len(batch)
        lead_import.valid_rows += counts.valid
        lead_import.invalid_rows += counts.invalid
        lead_import.created_leads += counts.created
        lead_import.existing_leads += counts.existing
        lead_import.heartbeat_at = timezone.now()
        finished = lead_import.cursor >= len(cells)
        if finished:
            lead_import.status = LeadImport.Status.DONE if phase == LeadImport.Status.IMPORTING else LeadImport.Status.CHECKED
            lead_import.finished_at = lead_import.heartbeat_at if phase == LeadImport.Status.IMPORTING else None
        lead_import.save(update_fields=["cursor", "valid_rows", "invalid_rows", "created_leads", "existing_leads",
                                        "heartbeat_at", "status", "finished_at", "preview"])
        if lead_ids:
            events.emit("lead.imported", organization_id=lead_import.organization_id,
                        data={"import_id": lead_import.pk, "lead_ids": lead_ids, "greet": lead_import.greet})
    return not finished, len(batch)


def _rows(lead_import: LeadImport, batch, *, ingest: bool) -> tuple[_Chunk, list[int]]:
    org = lead_import.organization
    counts, lead_ids, errors = _Chunk(), [], []
    received_at = timezone.now()
    for line, cells in batch:
        if not any(cell.strip() for cell in cells):
            continue  # a blank line is not a row
        body, problems = csvfile.lead_body(cells, lead_import.headers, lead_import.mapping, source=lead_import.source,
                                           campaign=lead_import.campaign, consent_all=lead_import.consent_all)
        row = dict(zip(lead_import.headers, cells))
        serializer = LeadSerializer(data=body, context={"phone_region": org.phone_region})
        if not serializer.is_valid() or problems:
            counts.invalid += 1
            errors.append(RowError(lead_import=lead_import, line=line, values=row, errors={**problems, **_messages(serializer.errors)}))
            continue
        if not ingest:
            counts.valid += 1
            if len(lead_import.preview) < PREVIEW_ROWS:
                lead_import.preview.append({"line": line, **_shown(serializer.validated_data)})
            continue
        payload = {"import_id": lead_import.pk, "file": lead_import.file_name, "line": line, "row": row}
        try:
            with transaction.atomic():  # one row the database refuses must not undo its chunk
                result = lead_ingest(org=org, data=serializer.to_lead_input(), payload=payload, received_at=received_at, imported=True)
        except (DataError, IntegrityError) as exc:
            logger.warning("import %s row %s refused by the database: %s", lead_import.pk, line, type(exc).__name__)
            counts.invalid += 1
            errors.append(RowError(lead_import=lead_import, line=line, values=row,
                                   errors={"row": [f"Could not be stored ({type(exc).__name__}); check its values."]}))
            continue
        counts.valid += 1
        if result.created:
            counts.created += 1
            lead_ids.append(result.lead_id)
        else:
            counts.existing += 1
    RowError.objects.bulk_create(errors, ignore_conflicts=True)  # a row the check already reported stays reported once
    return counts, lead_ids


def _messages(errors) -> dict:
    """DRF's error tree as plain {field: [message, ...]}."""
    if isinstance(errors, dict):
        return {field: [str(m) for m in (messages if isinstance(messages, list) else [messages])] for field, messages in errors.items()}
    return {"row": [str(errors)]}


def _shown(data: dict) -> dict:
    return {key: data.get(key) for key in ("name", "phone", "email", "campaign", "external_id", "consent")} | {
        "metadata": ", ".join(f"{k}={v}" for k, v in data.get("metadata", {}).items())
    }


def stalled() -> list[int]:
    """Running imports with no chunk committed for IMPORT_STALL_SECONDS (worker killed, queue message lost)."""
    cutoff = timezone.now() - timedelta(seconds=settings.IMPORT_STALL_SECONDS)
    return list(LeadImport.objects.filter(status__in=LeadImport.RUNNING, heartbeat_at__lt=cutoff).values_list("pk", flat=True))
