"""Admin: contact syncs (filter by state for the failed and dead-lettered, retry action) and the push log,
each limited to the user's organization (swiftex/admin_tenancy.py)."""

from __future__ import annotations

from django.contrib import admin, messages

from conversations.admin import ReadOnlyAdmin
from crmsync import queue
from crmsync.models import ContactSync, CrmPush
from swiftex.admin_tenancy import TenantAdminMixin


@admin.register(ContactSync)
class ContactSyncAdmin(TenantAdminMixin, ReadOnlyAdmin):
    """Rows are written by the sync; sales ops look at what failed and retry it once fixed."""

    list_display = ("contact", "organization", "state", "adapter", "crm_id", "attempts", "last_error", "changed_at", "synced_at")
    list_filter = ("state", "adapter", "organization")
    list_select_related = ("contact", "organization")
    search_fields = ("contact__phone", "contact__email", "crm_id")
    ordering = ("-changed_at",)
    actions = ["retry_now"]

    def has_delete_permission(self, request, obj=None):
        return False  # a deleted row would silently stop the contact's sync; retry it instead

    @admin.action(description="Retry now (failed or dead-lettered)", permissions=["operate"])
    def retry_now(self, request, queryset) -> None:
        retried = queue.retry_now(list(queryset.values_list("pk", flat=True)))
        skipped = queryset.count() - retried
        if retried:
            self.message_user(request, f"{retried} contact(s) queued for the CRM again; they go with the next push.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} selected contact(s) were not failed or dead-lettered; left as they are.", messages.INFO)


@admin.register(CrmPush)
class CrmPushAdmin(TenantAdminMixin, ReadOnlyAdmin):
    list_display = ("at", "organization", "adapter", "outcome", "items", "status_code", "duration_ms", "detail")
    list_filter = ("outcome", "adapter", "organization")
    date_hierarchy = "at"

    def has_delete_permission(self, request, obj=None):
        return False
