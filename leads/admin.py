"""Admin for sales ops: organizations (greeting, replies, follow-up hours, opt-out, routing,
credentials), API keys, contacts and leads (with reassign, resend-greeting and CRM-retry actions).

Credentials are write-only here: the form shows whether one is set, never its
value, and leaving the field empty keeps the stored one. An API key's raw value
is shown once, on the page right after it is created; only its hash is stored.
Every admin here is limited to the user's organization (swiftex/admin_tenancy.py).
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db import models
from django.db.models import Q
from django.template.response import TemplateResponse
from django.utils import timezone

from leads import admin_actions, admin_filters, auth
from leads.models import ApiKey, Contact, Lead, LeadEvent, Organization, Submission
from leads.services import organization_defaults
from swiftex.admin_secrets import HiddenSecretsMixin
from swiftex.events import emit
from swiftex.admin_tenancy import TenantAdminMixin, TenantInlineMixin, scope_of

SECRET_FIELDS = (
    "whatsapp_access_token", "whatsapp_app_secret", "whatsapp_verify_token", "twilio_auth_token", "hubspot_access_token",
    "crm_webhook_secret",
)


# Credentials a new organization takes from the environment when the admin leaves them empty.
ENV_DEFAULT_SECRETS = tuple(name for name in SECRET_FIELDS if name in organization_defaults())


def _url_as_https(db_field, kwargs: dict) -> dict:
    """A URL typed without a scheme is https (Django 6's default, and no deprecation warning)."""
    return {**kwargs, "assume_scheme": "https"} if isinstance(db_field, models.URLField) else kwargs


class OrganizationForm(forms.ModelForm):
    clear_secrets = forms.MultipleChoiceField(
        required=False, choices=[(name, name) for name in SECRET_FIELDS], widget=forms.CheckboxSelectMultiple,
        help_text="Tick a credential to remove it.",
    )
    editor_is_superuser = True  # OrganizationAdmin.get_form sets it per request

    class Meta:
        model = Organization
        fields = "__all__"

        def formfield_callback(db_field, **kwargs):
            return db_field.formfield(**_url_as_https(db_field, kwargs))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in SECRET_FIELDS:
            field = self.fields.get(name)
            if field is None:  # a view-only page: HiddenSecretsMixin shows "set" / "not set" instead
                continue
            is_set = bool(self.instance.pk and getattr(self.instance, name))
            field.widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
            field.required = False
            if self.instance.pk:
                field.help_text = "Set — leave empty to keep it." if is_set else "Not set."
            elif name in ENV_DEFAULT_SECRETS and organization_defaults().get(name):
                field.help_text = f"Leave empty to use the environment's {name.upper()}."
            else:
                field.help_text = "Not set."
        if owner := self.fields.get("fallback_owner"):
            # Only this organization's reps can own its leads (a new organization has none yet).
            owner.queryset = owner.queryset.filter(organization_id=self.instance.pk) if self.instance.pk else owner.queryset.none()

    def clean(self):
        cleaned = super().clean()
        for name in SECRET_FIELDS:
            if name in cleaned.get("clear_secrets", []):
                cleaned[name] = ""
            elif not cleaned.get(name) and self.instance.pk:
                cleaned[name] = getattr(self.instance, name)  # empty input keeps the stored secret
            elif not cleaned.get(name) and name in ENV_DEFAULT_SECRETS and name in self.fields:
                # A new organization: the environment's credential, before the model's checks
                # (HubSpot sync, pre-filled from the environment, needs its token).
                cleaned[name] = organization_defaults()[name]
        if not self.editor_is_superuser:
            self._refuse_other_organizations_numbers(cleaned)
        return cleaned

    def _refuse_other_organizations_numbers(self, cleaned: dict) -> None:
        """Webhooks find their organization by these; an organization's admin claiming another
        organization's number would have that organization's webhooks refused or misrouted."""
        others = Organization.objects.exclude(pk=self.instance.pk)
        pnid = cleaned.get("whatsapp_phone_number_id")
        if pnid and others.filter(whatsapp_phone_number_id=pnid).exists():
            self.add_error("whatsapp_phone_number_id", "Another organization already uses this WhatsApp phone number id; "
                           "ask a Swiftex administrator if it is yours.")
        sid, number = cleaned.get("twilio_account_sid"), cleaned.get("twilio_from_number")
        if sid and number and others.filter(twilio_account_sid=sid, twilio_from_number=number).exists():
            self.add_error("twilio_from_number", "Another organization already sends from this number on this Twilio account; "
                           "ask a Swiftex administrator if it is yours.")


@admin.register(Organization)
class OrganizationAdmin(HiddenSecretsMixin, TenantAdminMixin, admin.ModelAdmin):
    tenant_path = "pk"
    form = OrganizationForm
    secret_fields = SECRET_FIELDS
    editor_only_fieldsets = ("Remove credentials",)
    list_display = ("name", "timezone", "whatsapp_phone_number_id", "twilio_from_number", "ai_model", "crm_adapter", "created_at")
    search_fields = ("name",)
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
        ("Speed-to-lead analytics", {
            "description": "The dashboard is at /app/analytics/ for managers.",
            "fields": ("first_response_target_seconds",),
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

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        return super().formfield_for_dbfield(db_field, request, **_url_as_https(db_field, kwargs))

    def get_changeform_initial_data(self, request):
        # A new organization starts from the environment's defaults, as `create_organization`
        # does; the credentials among them are never put into the page (the form's clean applies them).
        shown = {name: value for name, value in organization_defaults().items() if name not in SECRET_FIELDS}
        return {**shown, **super().get_changeform_initial_data(request)}

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)  # a fresh subclass per request
        form.editor_is_superuser = request.user.is_superuser
        return form

    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        # The intake limit protects the platform, not the tenant: Swiftex staff set it.
        return fields if request.user.is_superuser else (*fields, "ingest_rate_per_minute")

    def has_add_permission(self, request):
        return request.user.is_superuser and super().has_add_permission(request)

    def has_delete_permission(self, request, obj=None):
        # Deleting an organization deletes every lead, message and key it has.
        return request.user.is_superuser and super().has_delete_permission(request, obj)


@admin.register(ApiKey)
class ApiKeyAdmin(TenantAdminMixin, admin.ModelAdmin):
    """Keys are created here (the raw key is shown once, on the next page) and revoked by the action."""

    list_display = ("prefix", "name", "source_or_any", "organization", "created_at", "revoked_at")
    list_filter = ("organization",)
    list_select_related = ("organization",)
    readonly_fields = ("prefix", "created_at", "revoked_at")
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("organization", "name", "source")
        return ("organization", "name", "source", "prefix", "created_at", "revoked_at")

    def get_readonly_fields(self, request, obj=None):
        # A partner's external_ids are unique within its source: moving a live key to
        # another source would let its retries create second leads. Issue a new key instead.
        return self.readonly_fields + (("source",) if obj else ())

    @admin.display(description="Source", ordering="source")
    def source_or_any(self, key: ApiKey) -> str:
        return key.source or "any (from the body)"

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        scope = scope_of(request)
        if not scope.everything:
            obj.organization_id = scope.organization_id
        issued, raw_key = ApiKey.issue(obj.organization, obj.name, obj.source)
        obj.pk = issued.pk
        obj.refresh_from_db()  # the admin goes on with `obj` (history, the next page)
        request._swiftex_issued_key = raw_key  # this request only: never stored, never in a message or cookie

    def response_add(self, request, obj, post_url_continue=None):
        raw_key = getattr(request, "_swiftex_issued_key", None)
        if raw_key is None:
            return super().response_add(request, obj, post_url_continue)
        response = TemplateResponse(request, "admin/leads/apikey/issued.html", {
            **self.admin_site.each_context(request), "title": "API key created", "opts": self.opts, "api_key": obj,
            "raw_key": raw_key,
        })
        response["Cache-Control"] = "no-store"  # not kept by the browser's cache either
        return response

    @admin.action(description="Revoke (the key stops working)", permissions=["change"])
    def revoke(self, request, queryset) -> None:
        now = timezone.now()
        selected = queryset.count()
        revoked = queryset.filter(Q(revoked_at__isnull=True) | Q(revoked_at__gt=now)).update(revoked_at=now)
        auth.clear_cache()  # this process forgets the key now; the others within API_KEY_CACHE_SECONDS
        if revoked:
            self.message_user(
                request, f"{revoked} key(s) revoked: refused from now on (web processes that cached them refuse them "
                f"within {settings.API_KEY_CACHE_SECONDS:g} s).", messages.SUCCESS,
            )
        if selected - revoked:
            self.message_user(request, f"{selected - revoked} key(s) were already revoked; left as they are.", messages.INFO)


@admin.register(Contact)
class ContactAdmin(TenantAdminMixin, admin.ModelAdmin):
    list_display = ("__str__", "organization", "phone", "email", "consent", "consent_at", "created_at")
    list_filter = ("organization", "consent")
    list_select_related = ("organization",)
    search_fields = ("phone", "email", "name")
    show_full_result_count = False
    # Consent comes from the contact (the form's checkbox, an opt-out keyword), never from
    # an admin: ticking it back on for someone who wrote STOP would message them again.
    readonly_fields = ("consent", "consent_at", "consent_revoked_at")

    def get_readonly_fields(self, request, obj=None):
        # A contact stays in its organization: its leads and messages are there.
        return self.readonly_fields + (("organization",) if obj is not None else ())

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and form.changed_data:  # the CRM shows the contact as edited here too
            emit("contact.updated", organization_id=obj.organization_id, data={"contact_id": obj.pk})


class LeadEventInline(TenantInlineMixin, admin.TabularInline):
    model = LeadEvent
    tenant_path = "lead__organization"
    fields = ("occurred_at", "kind", "data")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("occurred_at", "pk")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class LeadAdminForm(forms.ModelForm):
    # The status the page showed: the status is changed only if the admin picked another one,
    # not because the greeting or a rep moved it while the page was open.
    status_seen = forms.CharField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.status_in_db = self.fields["status_seen"].initial = self.instance.status  # the form copies the new one in

    @property
    def status_edited(self) -> bool:
        return self.cleaned_data.get("status") != (self.cleaned_data.get("status_seen") or self.status_in_db)

    def clean(self):
        from reps.services import CLOSED, stays_closed

        cleaned = super().clean()
        if "status" in cleaned and self.status_edited and self.status_in_db in CLOSED:
            self.add_error("status", stays_closed(self.instance))
        return cleaned


@admin.register(Lead)
class LeadAdmin(TenantAdminMixin, admin.ModelAdmin):
    """The list stays fast at hundreds of thousands of leads (docs/admin.md has the measurements):
    one query for the page with everything its columns show (list_select_related), no count of
    the whole table, no facet counts, filters that use indexes or no query at all
    (leads/admin_filters.py), and an exact indexed lookup when the search is a phone or e-mail."""

    list_display = ("pk", "contact", "status", "source", "campaign", "owner", "greeting_state", "captured_at",
                    "first_response_at", "organization")
    list_select_related = ("organization", "contact", "assignment__rep__user", "greeting")
    list_filter = ("status", admin_filters.SourceFilter, admin_filters.CampaignFilter, admin_filters.OwnerFilter,
                   admin_filters.GreetingFilter, ("captured_at", admin.DateFieldListFilter), "organization")
    search_fields = ("contact__name", "contact__phone", "contact__email")
    search_help_text = "A whole phone number or e-mail address finds its lead at once; other text searches names, phones and e-mails."
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    form = LeadAdminForm
    fields = ("organization", "contact", "status", "status_seen", "source", "campaign", "routing", "captured_at",
              "first_response_at", "closed_at", "imported", "created_at")
    # A lead stays in its organization (its contact, messages and timeline are there); closed_at follows the status.
    readonly_fields = ("organization", "contact", "captured_at", "first_response_at", "closed_at", "imported", "created_at")
    inlines = [LeadEventInline]
    actions = [admin_actions.reassign, admin_actions.resend_greeting, admin_actions.retry_crm_sync]

    def has_add_permission(self, request):
        return False  # leads come in through the API: dedupe, routing and the greeting happen there

    def save_model(self, request, obj, form, change):
        """Only the fields edited are written (a status the greeting or a rep set meanwhile stays),
        and a new status goes through the same rules and effects as a rep's change."""
        from reps import services as rep_services

        edited = [name for name in form.changed_data if name not in ("status", "status_seen")]
        if edited:
            obj.save(update_fields=edited)
        if form.status_edited:
            try:
                rep_services.change_status(lead=obj, by=f"{request.user.get_username()} (admin)", status=obj.status, reason="admin")
            except rep_services.NotAllowed as exc:
                self.message_user(request, str(exc), messages.ERROR)

    def get_list_display(self, request):
        columns = super().get_list_display(request)
        return columns if scope_of(request).everything else tuple(c for c in columns if c != "organization")

    def get_search_results(self, request, queryset, search_term):
        if search_term.strip():
            scope = scope_of(request)
            region = None if scope.everything else Organization.objects.filter(pk=scope.organization_id).values_list(
                "phone_region", flat=True).first()  # a number typed without +country reads as the organization's
            if exact := admin_filters.exact_contact_lookup(search_term, region):
                if not scope.everything:  # the contact's unique index starts with its organization
                    exact["contact__organization_id"] = scope.organization_id
                return queryset.filter(**exact), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="owner", ordering="assignment__rep__user__first_name")
    def owner(self, lead: Lead) -> str:
        assignment = getattr(lead, "assignment", None)  # select_related: no query, None when unassigned
        return str(assignment.rep) if assignment and assignment.rep else "—"

    @admin.display(description="greeting", ordering="greeting__state")
    def greeting_state(self, lead: Lead) -> str:
        greeting = getattr(lead, "greeting", None)
        return greeting.get_state_display() if greeting else "—"


@admin.register(Submission)
class SubmissionAdmin(TenantAdminMixin, admin.ModelAdmin):
    """Submissions are kept exactly as received: visible, never edited."""

    list_display = ("pk", "organization", "lead", "source", "external_id", "received_at")
    list_filter = ("organization", "source")
    list_select_related = ("organization", "lead")
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
