"""Admin for sales-ops: organizations (greeting, replies, follow-up hours, opt-out, credentials) and leads.

Credentials are write-only here: the form shows whether one is set, never its
value, and leaving the field empty keeps the stored one.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db import models

from leads.models import ApiKey, Contact, Lead, LeadEvent, Organization, Submission

SECRET_FIELDS = (
    "whatsapp_access_token", "whatsapp_app_secret", "whatsapp_verify_token", "twilio_auth_token", "hubspot_access_token",
    "crm_webhook_secret",
)


def _url_as_https(db_field, kwargs: dict) -> dict:
    """A URL typed without a scheme is https (Django 6's default, and no deprecation warning)."""
    return {**kwargs, "assume_scheme": "https"} if isinstance(db_field, models.URLField) else kwargs


class OrganizationForm(forms.ModelForm):
    clear_secrets = forms.MultipleChoiceField(
        required=False, choices=[(name, name) for name in SECRET_FIELDS], widget=forms.CheckboxSelectMultiple,
        help_text="Tick a credential to remove it.",
    )

    class Meta:
        model = Organization
        fields = "__all__"

        def formfield_callback(db_field, **kwargs):
            return db_field.formfield(**_url_as_https(db_field, kwargs))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in SECRET_FIELDS:
            field = self.fields[name]
            is_set = bool(self.instance.pk and getattr(self.instance, name))
            field.widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
            field.required = False
            field.help_text = "Set — leave empty to keep it." if is_set else "Not set."

    def clean(self):
        cleaned = super().clean()
        for name in SECRET_FIELDS:
            if name in cleaned.get("clear_secrets", []):
                cleaned[name] = ""
            elif not cleaned.get(name) and self.instance.pk:
                cleaned[name] = getattr(self.instance, name)  # empty input keeps the stored secret
        return cleaned


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    form = OrganizationForm
    list_display = ("name", "timezone", "whatsapp_phone_number_id", "twilio_from_number", "ai_model", "crm_adapter", "created_at")
    search_fields = ("name",)

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        return super().formfield_for_dbfield(db_field, request, **_url_as_https(db_field, kwargs))
    # Every editable field appears in exactly one fieldset (tests/test_admin.py checks it),
    # grouped by what sales-ops come to change.
    fieldsets = (
        ("Organization", {"fields": ("name", "phone_region", "ingest_rate_per_minute", "ai_model")}),
        ("Greeting", {"fields": ("ai_prompt", "greeting_fallback")}),
        ("Replies", {
            "description": "Answers to the lead's messages: one reply per burst, after the quiet window.",
            "fields": ("reply_prompt", "reply_fallback", ("reply_debounce_seconds", "reply_debounce_max_seconds")),
        }),
        ("Follow-ups and business hours", {
            "description": "The follow-up messages themselves are edited under Conversations › Follow-up sequences.",
            "fields": ("timezone", "quiet_hours_enabled", ("business_hours_start", "business_hours_end"), "business_days",
                       "inactivity_timeout_hours"),
        }),
        ("Lead routing", {
            "description": "Which team gets a new lead is set under Routing › Routing rules; teams and reps under Routing too.",
            "fields": ("fallback_owner", "escalation_minutes", "reps_see_only_own_leads"),
        }),
        ("WhatsApp template", {
            "description": "For business-initiated WhatsApp messages (greetings, follow-ups) outside the 24-hour window.",
            "fields": ("whatsapp_template_name", "whatsapp_template_language", "whatsapp_template_has_parameter"),
        }),
        ("Opt-out", {"fields": ("opt_out_keywords", "opt_out_confirmation")}),
        ("CRM sync", {
            "description": "Failed and dead-lettered syncs are listed under CRM sync › Contact syncs, with a retry action.",
            "fields": ("crm_adapter", "crm_requests_per_second", "hubspot_phone_property", "crm_webhook_url", "crm_webhook_secret"),
        }),
        ("Provider credentials", {
            "description": "Secrets are never shown: leave one empty to keep it, type a value to replace it.",
            "fields": ("whatsapp_phone_number_id", "whatsapp_access_token", "whatsapp_app_secret", "whatsapp_verify_token",
                       "twilio_account_sid", "twilio_auth_token", "twilio_from_number", "hubspot_access_token"),
        }),
        ("Remove credentials", {"classes": ("collapse",), "fields": ("clear_secrets",)}),
    )


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "organization", "created_at", "revoked_at")
    list_filter = ("organization",)
    readonly_fields = ("prefix", "key_hash", "created_at")
    fields = ("organization", "name", "prefix", "key_hash", "created_at", "revoked_at")

    def has_add_permission(self, request):
        return False  # keys are issued by `create_organization` / `demo_organization`, shown once


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = ("__str__", "organization", "phone", "email", "consent", "consent_at", "created_at")
    list_filter = ("organization", "consent")
    search_fields = ("phone", "email", "name")
    # Consent comes from the contact (the form's checkbox, an opt-out keyword), never from
    # an admin: ticking it back on for someone who wrote STOP would message them again.
    readonly_fields = ("consent", "consent_at")


class LeadEventInline(admin.TabularInline):
    model = LeadEvent
    fields = ("occurred_at", "kind", "data")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("occurred_at", "pk")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Lead)
class LeadAdmin(admin.ModelAdmin):
    list_display = ("pk", "organization", "contact", "status", "source", "captured_at", "first_response_at")
    list_filter = ("organization", "status", "source")
    search_fields = ("contact__phone", "contact__email", "contact__name")
    raw_id_fields = ("contact",)
    readonly_fields = ("captured_at", "first_response_at", "created_at")
    inlines = [LeadEventInline]


@admin.register(Submission)
class SubmissionAdmin(admin.ModelAdmin):
    list_display = ("pk", "organization", "lead", "source", "external_id", "received_at")
    list_filter = ("organization", "source")
    raw_id_fields = ("contact", "lead")
