"""Web forms in admin: sales ops create and edit them; the change page hands out the hosted
address and the embed snippet, ready to copy. Scoped to the user's organization like every
other admin (swiftex/admin_tenancy.py)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.utils.html import format_html

from swiftex.admin_tenancy import TenantAdminMixin
from webforms.models import WebForm


def hosted_url(form: WebForm) -> str:
    return f"{settings.PUBLIC_BASE_URL.rstrip('/')}{form.path}"


def embed_snippet(form: WebForm) -> str:
    return f'<script src="{hosted_url(form)}/embed.js" async></script>'


def _copyable(value: str, rows: int = 1):
    # A read-only text box: one click in it and Ctrl/Cmd-A, Ctrl/Cmd-C copies it exactly.
    return format_html('<textarea readonly rows="{}" cols="90" class="vLargeTextField" spellcheck="false">{}</textarea>', rows, value)


@admin.register(WebForm)
class WebFormAdmin(TenantAdminMixin, admin.ModelAdmin):
    list_display = ("title", "organization", "campaign", "source", "is_active", "hosted_link", "updated_at")
    list_filter = ("organization", "is_active")
    list_select_related = ("organization",)
    search_fields = ("title", "campaign", "slug")
    readonly_fields = ("hosted_address", "embed_code", "slug", "created_at", "updated_at")
    fieldsets = (
        ("Publish", {
            "description": "Link to the hosted page, or paste the snippet into any web page where the form should appear.",
            "fields": ("hosted_address", "embed_code"),
        }),
        ("Form", {"fields": ("organization", "title", "intro", "is_active")}),
        ("Fields", {
            "description": "Show phone, e-mail or both; a lead is answered on the phone (WhatsApp or SMS).",
            "fields": (("name_field", "phone_field"), ("email_field", "message_field"), "consent_label"),
        }),
        ("Lead", {"fields": ("source", "campaign")}),
        ("After sending", {"fields": ("thank_you_text",)}),
        ("Embedding", {"fields": ("allowed_origins",)}),
        ("Record", {"classes": ("collapse",), "fields": ("slug", "created_at", "updated_at")}),
    )

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        return fieldsets if obj is not None else fieldsets[1:-1]  # nothing to publish before it is saved

    @admin.display(description="Hosted page")
    def hosted_link(self, obj: WebForm):
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', hosted_url(obj), obj.path)

    @admin.display(description="Hosted page")
    def hosted_address(self, obj: WebForm):
        return format_html('{}<p class="help"><a href="{}" target="_blank" rel="noopener">Open it</a>{}</p>',
                           _copyable(hosted_url(obj)), hosted_url(obj), "" if obj.is_active else " (inactive: it answers “not found”)")

    @admin.display(description="Embed snippet")
    def embed_code(self, obj: WebForm):
        return format_html('{}<p class="help">Optional: add <code>data-target="#an-element-id"</code> to place the form inside that '
                           "element; otherwise it appears where the snippet is.</p>", _copyable(embed_snippet(obj), rows=2))
