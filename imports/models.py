"""A CSV list upload and what became of each of its rows.

An import is checked (a dry run: every row validated, nothing written but the
errors) and then imported, both on the bulk lane, a chunk of rows per
transaction. `cursor` is the number of data rows done in the current phase,
committed with the chunk it covers, so a worker killed mid-import resumes at
the next chunk and no row is ever ingested twice.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from leads.models import Organization, validate_source

TARGETS = {
    "name": "Name",
    "first_name": "First name",
    "last_name": "Last name",
    "phone": "Phone",
    "email": "Email",
    "message": "Message",
    "campaign": "Campaign",
    "external_id": "External id (deduplicates re-imports)",
    "consent": "Consent (yes/no)",
    "metadata": "Keep as metadata",
    "ignore": "Ignore",
}


class LeadImport(models.Model):
    class Status(models.TextChoices):
        UPLOADED = "uploaded", "Uploaded: map the columns"
        CHECKING = "checking", "Checking (dry run)"
        CHECKED = "checked", "Checked: ready to import"
        IMPORTING = "importing", "Importing"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Stopped"

    RUNNING = (Status.CHECKING, Status.IMPORTING)

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="lead_imports")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    file_name = models.CharField(max_length=255)
    content = models.TextField(help_text="The uploaded file, decoded.")
    delimiter = models.CharField(max_length=1, default=",")
    headers = models.JSONField(default=list)
    mapping = models.JSONField(default=list, help_text="One target per column (see TARGETS).")
    source = models.CharField(
        max_length=64, default="import", validators=[validate_source],
        help_text="Every imported lead gets this source; external ids are unique within it.",
    )
    campaign = models.CharField(max_length=128, blank=True, default="", help_text="Used where the row has no campaign column value.")
    consent_all = models.BooleanField(
        default=False, help_text="Every contact in this list opted in to WhatsApp/SMS messages. A row whose consent column says "
                                "no stays without consent, and a list never opts back in someone who sent STOP.",
    )
    greet = models.BooleanField(
        default=False, help_text="Greet every new lead of the list, at the bulk lane's pace. Off: no messages are sent.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UPLOADED)
    rows_total = models.PositiveIntegerField(default=0)
    cursor = models.PositiveIntegerField(default=0, help_text="Data rows done in the current phase.")
    valid_rows = models.PositiveIntegerField(default=0)
    invalid_rows = models.PositiveIntegerField(default=0)
    created_leads = models.PositiveIntegerField(default=0)
    existing_leads = models.PositiveIntegerField(default=0, help_text="Rows whose person already had an open lead.")
    preview = models.JSONField(default=list, blank=True, help_text="The first valid rows as they will be stored.")
    created_at = models.DateTimeField(auto_now_add=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last chunk committed.")
    chain = models.PositiveIntegerField(default=0, editable=False,
                                        help_text="The task chain working the import; a slice of an older one stops.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "CSV import"
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="import_running_idx")]

    def __str__(self) -> str:
        return f"{self.file_name} ({self.get_status_display().split(':')[0]})"

    @property
    def running(self) -> bool:
        return self.status in self.RUNNING

    @property
    def percent(self) -> int:
        return int(100 * self.cursor / self.rows_total) if self.rows_total else 100


class RowError(models.Model):
    """A row that cannot become a lead, and why, field by field."""

    lead_import = models.ForeignKey(LeadImport, on_delete=models.CASCADE, related_name="row_errors")
    line = models.PositiveIntegerField(help_text="Row number as a spreadsheet shows it (the header is row 1).")
    values = models.JSONField(help_text="The row as uploaded, by column.")
    errors = models.JSONField(help_text="Messages by field.")

    class Meta:
        ordering = ["line"]
        constraints = [models.UniqueConstraint(fields=["lead_import", "line"], name="import_row_error_once")]

    def __str__(self) -> str:
        return f"row {self.line}"
