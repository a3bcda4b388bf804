"""Admin for Meta Lead Ads: connected pages (token write-only), forms with their field mapping,
and every Meta lead received with its status, error and lead, with a retry action for failed ones.
Each list is limited to the user's organization (swiftex/admin_tenancy.py)."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from conversations.admin import ReadOnlyAdmin
from metaleads import reconcile, services
from metaleads.models import DEFAULT_MAPPING, MetaLeadForm, MetaLeadgen, MetaPage
from swiftex.admin_secrets import HiddenSecretsMixin
from swiftex.admin_tenancy import TenantAdminMixin


class MetaPageForm(forms.ModelForm):
    class Meta:
        model = MetaPage
        fields = ("organization", "page_id", "name", "access_token", "active")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields.get("access_token")
        if field is None:  # a view-only page: HiddenSecretsMixin shows "set" / "not set" instead
            return
        is_set = bool(self.instance.pk and self.instance.access_token)
        # Never rendered back: the page shows whether a token is set, not what it is.
        field.widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
        field.required = not is_set
        field.help_text = ("Set — leave empty to keep it, type a new one to replace it." if is_set else
                           "A page access token with the leads_retrieval permission (Graph API).")

    def clean_access_token(self) -> str:
        token = (self.cleaned_data.get("access_token") or "").strip()
        return token or (self.instance.access_token if self.instance.pk else "")


@admin.register(MetaPage)
class MetaPageAdmin(HiddenSecretsMixin, TenantAdminMixin, admin.ModelAdmin):
    form = MetaPageForm
    secret_fields = ("access_token",)
    list_display = ("page_id", "name", "organization", "active", "has_token", "created_at")
    list_filter = ("active", "organization")
    search_fields = ("page_id", "name")

    @admin.display(boolean=True, description="token set")
    def has_token(self, obj: MetaPage) -> bool:
        return bool(obj.access_token)


class MetaLeadFormForm(forms.ModelForm):
    class Meta:
        model = MetaLeadForm
        fields = ("page", "form_id", "name", "source", "campaign", "mapping", "consent", "consent_question", "consent_answers",
                  "reconcile")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "mapping" in self.fields:
            self.fields["mapping"].help_text += " Default: " + json.dumps(DEFAULT_MAPPING) + "; anything else goes to metadata."


@admin.register(MetaLeadForm)
class MetaLeadFormAdmin(TenantAdminMixin, admin.ModelAdmin):
    tenant_path = "page__organization"
    form = MetaLeadFormForm
    list_display = ("form_id", "name", "page", "source", "campaign", "consent", "reconcile", "watermark", "last_reconciled_at",
                    "last_reconcile_error")
    list_filter = ("consent", "reconcile", "page")
    list_select_related = ("page",)
    search_fields = ("form_id", "name")
    readonly_fields = ("watermark", "reconcile_progress", "last_reconciled_at", "last_reconcile_error", "created_at")
    fieldsets = (
        (None, {"fields": ("page", "form_id", "name", "source", "campaign")}),
        ("Field mapping", {"fields": ("mapping",)}),
        ("Consent to WhatsApp / SMS", {
            "description": "Without consent the lead is stored and routed but not greeted. Meta's own privacy "
                           "disclaimer is not an opt-in to messaging; a custom disclaimer checkbox or a question is.",
            "fields": ("consent", "consent_question", "consent_answers"),
        }),
        ("Reconciliation", {"fields": ("reconcile", "watermark", "reconcile_progress", "last_reconciled_at", "last_reconcile_error",
                                       "created_at")}),
    )
    actions = ["reconcile_now"]

    @admin.display(description="Listing in progress")
    def reconcile_progress(self, obj: MetaLeadForm) -> str:
        reading = reconcile.Pass.load(obj.reconcile_resume)
        if reading is None:
            return "none: the next run reads from the watermark"
        return (f"leads since {reading.since:%Y-%m-%d %H:%M:%S} UTC, begun {reading.began:%Y-%m-%d %H:%M:%S} UTC; "
                "the next run goes on from the last page read")

    @admin.action(description="Reconcile now (list Meta's leads and ingest any the webhook missed)", permissions=["change"])
    def reconcile_now(self, request, queryset) -> None:
        from metaleads.tasks import reconcile_form

        queued = 0
        for form_pk in queryset.values_list("pk", flat=True):
            try:
                reconcile_form.apply_async(kwargs={"form_pk": form_pk}, retry=False)
            except Exception:  # noqa: BLE001 - the broker is down; the scheduled run still comes
                self.message_user(request, "The task queue is unreachable; reconciliation runs on its schedule.", messages.ERROR)
                break
            queued += 1
        if queued:
            self.message_user(request, f"{queued} form(s) queued for reconciliation; results appear in their "
                              "'last reconciled' columns.", messages.SUCCESS)


@admin.register(MetaLeadgen)
class MetaLeadgenAdmin(TenantAdminMixin, ReadOnlyAdmin):
    list_display = ("leadgen_id", "organization", "page", "form", "status", "via", "attempts", "last_error", "lead_link",
                    "received_at", "finished_at")
    list_filter = ("status", "via", "organization")
    list_select_related = ("organization", "page", "form", "lead")
    search_fields = ("leadgen_id",)
    show_full_result_count = False
    actions = ["retry"]

    @admin.display(description="lead")
    def lead_link(self, obj: MetaLeadgen):
        if obj.lead_id is None:
            return "—"
        return format_html('<a href="{}">lead {}</a>', reverse("admin:leads_lead_change", args=[obj.lead_id]), obj.lead_id)

    @admin.action(description="Retry the failed ones (fetch from Meta again)", permissions=["operate"])
    def retry(self, request, queryset) -> None:
        selected = list(queryset.values_list("pk", flat=True))
        retried = services.retry_failed(selected)
        if retried:
            self.message_user(request, f"{len(retried)} Meta lead(s) queued to be fetched again.", messages.SUCCESS)
        if len(selected) - len(retried):
            self.message_user(request, f"{len(selected) - len(retried)} were not failed; left as they are.", messages.INFO)
