"""CSV import in Django admin: upload → map the columns → check (dry run) → import, with progress.

The add page takes the file and the list-wide choices; the change page is the
import itself: the column mapping (guessed from the headers, editable until
the import starts), the dry run's per-row errors and preview, the progress
while it runs (the page refreshes itself, no JavaScript needed), a stop
button, and every bad row as a CSV download.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from imports import csvfile, services
from imports.models import TARGETS, LeadImport, RowError
from leads.models import Organization
from swiftex.admin_tenancy import TenantAdminMixin, scope_of
from swiftex.csvexport import streamed_csv

ERRORS_SHOWN = 100
SAMPLE_ROWS = 3


class UploadForm(forms.Form):
    organization = forms.ModelChoiceField(queryset=Organization.objects.none())
    file = forms.FileField(help_text="CSV with a header row; UTF-8 (Excel: “CSV UTF-8”). Comma, semicolon or tab separated.")
    source = forms.CharField(initial="import", max_length=64, help_text=LeadImport._meta.get_field("source").help_text)
    campaign = forms.CharField(required=False, max_length=128, help_text=LeadImport._meta.get_field("campaign").help_text)
    consent_all = forms.BooleanField(required=False, label="Everyone on this list opted in",
                                     help_text=LeadImport._meta.get_field("consent_all").help_text)
    greet = forms.BooleanField(required=False, label="Greet the new leads",
                               help_text=LeadImport._meta.get_field("greet").help_text)

    def __init__(self, *args, organizations, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["organization"].queryset = organizations
        if organizations.count() == 1:
            self.fields["organization"].initial = organizations.first()


def _sample(lead_import: LeadImport) -> list[list[str]]:
    """The first few values of each column, to recognise it by."""
    first = [cells for _, cells in csvfile.stored_rows(lead_import.content, lead_import.delimiter, SAMPLE_ROWS)]
    return [[cells[index] if index < len(cells) else "" for cells in first] for index in range(len(lead_import.headers))]


@admin.register(LeadImport)
class LeadImportAdmin(TenantAdminMixin, admin.ModelAdmin):
    list_display = ("file_name", "status", "progress", "created_leads", "existing_leads", "invalid_rows", "organization", "created_at")
    list_filter = ("status", "organization")
    list_select_related = ("organization",)

    def get_queryset(self, request):
        return super().get_queryset(request).defer("content")

    @admin.display(description="Progress")
    def progress(self, lead_import: LeadImport) -> str:
        return f"{lead_import.cursor:,} / {lead_import.rows_total:,}"

    def get_urls(self):
        return [
            path("<int:import_id>/errors.csv", self.admin_site.admin_view(self.errors_csv), name="imports_leadimport_errors"),
            *super().get_urls(),
        ]

    # --- Upload ---------------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            return super().add_view(request, form_url, extra_context)
        organizations = scope_of(request).filter(Organization.objects.all(), "pk")
        form = UploadForm(request.POST or None, request.FILES or None, organizations=organizations)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            upload = data["file"]
            try:
                lead_import = services.upload(
                    organization=data["organization"], file_name=upload.name, raw=upload.read(), user=request.user,
                    source=data["source"].strip().lower(), campaign=data["campaign"].strip(),
                    consent_all=data["consent_all"], greet=data["greet"],
                )
            except services.ImportRefused as exc:
                form.add_error("file", str(exc))
            except forms.ValidationError as exc:
                form.add_error(None, exc)
            else:
                self.message_user(request, f"{lead_import.rows_total:,} rows read. Check the column mapping, then run the dry run.")
                return HttpResponseRedirect(reverse("admin:imports_leadimport_change", args=[lead_import.pk]))
        return self._render(request, "admin/imports/leadimport/upload.html", {"form": form, "title": "Import leads from a CSV file"})

    # --- The import page ------------------------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        lead_import = self.get_object(request, object_id)
        if lead_import is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if request.method == "POST" and self.has_change_permission(request, lead_import):
            return self._act(request, lead_import)
        errors = RowError.objects.filter(lead_import=lead_import)
        stalled = lead_import.running and lead_import.heartbeat_at and \
            (timezone.now() - lead_import.heartbeat_at).total_seconds() > settings.IMPORT_STALL_SECONDS
        return self._render(request, "admin/imports/leadimport/detail.html", {
            "title": f"Import of {lead_import.file_name}", "original": lead_import, "lead_import": lead_import,
            "columns": list(zip(lead_import.headers, lead_import.mapping, _sample(lead_import))),
            "targets": TARGETS.items(), "editable": lead_import.status in (LeadImport.Status.UPLOADED, LeadImport.Status.CHECKED)
            and self.has_change_permission(request, lead_import),
            "errors": errors[:ERRORS_SHOWN], "error_count": errors.count(), "errors_shown": ERRORS_SHOWN, "stalled": stalled,
            "leads_url": reverse("admin:leads_lead_changelist") + f"?source={lead_import.source}",
        })

    def _act(self, request, lead_import: LeadImport):
        here = HttpResponseRedirect(request.path)
        if "_stop" in request.POST:
            if services.stop(lead_import):
                self.message_user(request, "Stopped after the current chunk. The leads already imported stay.", messages.WARNING)
            return here
        mapping = [request.POST.get(f"column-{index}", "ignore") for index in range(len(lead_import.headers))]
        phase = LeadImport.Status.IMPORTING if "_import" in request.POST else LeadImport.Status.CHECKING
        try:
            services.start(lead_import, phase, mapping=mapping)
        except services.ImportRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
        return here

    def errors_csv(self, request, import_id: int):
        lead_import = self.get_object(request, str(import_id))
        if lead_import is None or not self.has_view_permission(request, lead_import):
            raise Http404("No such import.")
        headers = lead_import.headers
        rows = (
            [error.line, "; ".join(f"{field}: {' '.join(problems)}" for field, problems in error.errors.items()),
             *(error.values.get(header, "") for header in headers)]
            for error in RowError.objects.filter(lead_import=lead_import).iterator(chunk_size=2000)
        )
        return streamed_csv(f"import-{lead_import.pk}-errors.csv", ["row", "errors", *headers], rows)

    def _render(self, request, template: str, context: dict):
        return TemplateResponse(request, template, {**self.admin_site.each_context(request), "opts": self.opts, **context})
