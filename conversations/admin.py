"""Admin: greetings, replies and messages with their provider outcome, follow-up sequences,
scheduled jobs (with retry and cancel), and every webhook received. Each list is limited to
the user's organization (swiftex/admin_tenancy.py)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Exists, OuterRef
from django.utils import timezone

from conversations.models import (
    Conversation, FollowUpSequence, FollowUpStep, Greeting, Message, Reply, ScheduledJob, WebhookDelivery,
)
from leads.models import validate_text_template
from swiftex.admin_tenancy import TenantAdminMixin, TenantInlineMixin


class ReadOnlyAdmin(admin.ModelAdmin):
    """What providers and workers wrote: visible, not editable."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_operate_permission(self, request) -> bool:
        # Actions here change rows (retry, cancel), so they need the change permission the pages deny.
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")


@admin.register(Greeting)
class GreetingAdmin(TenantAdminMixin, ReadOnlyAdmin):
    list_display = ("lead", "organization", "state", "text_source", "model_ms", "reason", "created_at")
    list_filter = ("state", "text_source", "organization")
    search_fields = ("lead__contact__phone", "lead__contact__email")


@admin.register(Reply)
class ReplyAdmin(TenantAdminMixin, ReadOnlyAdmin):
    list_display = ("pk", "conversation", "lead", "kind", "state", "text_source", "model_ms", "reason", "created_at")
    list_filter = ("kind", "state", "organization")
    list_select_related = ("conversation", "lead")
    search_fields = ("conversation__contact__phone",)

    def has_delete_permission(self, request, obj=None):
        # Deleting a reply would delete its message (cascade) and un-answer the messages
        # it answered, so the unanswered sweep would answer them a second time.
        return False


@admin.register(Message)
class MessageAdmin(TenantAdminMixin, ReadOnlyAdmin):
    list_display = ("pk", "organization", "direction", "channel", "status", "error_code", "error_title", "attempts", "created_at")
    list_filter = ("status", "channel", "direction", "organization")
    search_fields = ("provider_message_id", "conversation__contact__phone")


@admin.register(Conversation)
class ConversationAdmin(TenantAdminMixin, ReadOnlyAdmin):
    list_display = ("contact", "organization", "channel", "last_inbound_at", "created_at")
    list_filter = ("channel", "organization")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(TenantAdminMixin, ReadOnlyAdmin):
    list_display = ("pk", "provider", "organization", "outcome", "detail", "received_at")
    list_filter = ("provider", "outcome")


# --- Follow-ups ---------------------------------------------------------------------------------


class FollowUpStepForm(forms.ModelForm):
    class Meta:
        model = FollowUpStep
        fields = "__all__"

    def clean_text(self) -> str:
        # The sender falls back to a generic text on a bad placeholder; refuse it here instead.
        text = self.cleaned_data["text"]
        validate_text_template(text)
        return text


class FollowUpStepInline(TenantInlineMixin, admin.TabularInline):
    model = FollowUpStep
    tenant_path = "sequence__organization"
    form = FollowUpStepForm
    fields = ("position", "delay_minutes", "channel", "text", "use_ai", "template_name", "template_language")
    ordering = ("position",)
    extra = 1


@admin.register(FollowUpSequence)
class FollowUpSequenceAdmin(TenantAdminMixin, admin.ModelAdmin):
    list_display = ("name", "organization", "active", "step_count")
    list_filter = ("active", "organization")
    list_select_related = ("organization",)
    search_fields = ("name",)
    fields = ("organization", "name", "active", "created_at")
    readonly_fields = ("created_at",)
    inlines = [FollowUpStepInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(step_count=Count("steps"))

    @admin.display(description="steps", ordering="step_count")
    def step_count(self, obj: FollowUpSequence) -> int:
        return obj.step_count


@admin.register(ScheduledJob)
class ScheduledJobAdmin(TenantAdminMixin, ReadOnlyAdmin):
    """Jobs are written by the scheduler and workers; admins only retry or cancel them.

    Each action is one UPDATE whose WHERE re-checks the status on the job's own row (and,
    for a retry, that no message exists), so a job a worker moved meanwhile is left
    alone: a done or running job is never made pending or cancelled.
    """

    list_display = ("lead", "organization", "kind", "status", "due_at", "attempts", "reason", "step")
    list_filter = ("status", "kind", "organization")
    list_select_related = ("lead", "organization", "step__sequence")  # step's __str__ names its sequence
    date_hierarchy = "due_at"
    search_fields = ("lead__contact__phone", "lead__contact__email")
    actions = ["retry_now", "cancel"]

    def has_delete_permission(self, request, obj=None):
        # Cancel instead: deleting a job deletes its message (cascade), and a redelivered
        # `lead.greeted` could then schedule the same step again and send it twice.
        return False

    @admin.action(description="Retry now (failed or cancelled follow-ups)", permissions=["operate"])
    def retry_now(self, request, queryset) -> None:
        selected = queryset.count()  # before the update: a changelist filtered by status would shrink
        retryable = ScheduledJob.objects.filter(
            pk__in=queryset.values("pk"), kind=ScheduledJob.Kind.FOLLOWUP,
            status__in=[ScheduledJob.Status.FAILED, ScheduledJob.Status.CANCELLED],
        )
        has_message = Exists(Message.objects.filter(scheduled_job=OuterRef("pk")))
        # A job whose message exists already went to a provider (or may have): resending could double it.
        already_sent = list(retryable.filter(has_message).values_list("pk", flat=True))
        retried = retryable.filter(~has_message).update(
            status=ScheduledJob.Status.PENDING, due_at=timezone.now(), reason=f"retried by {request.user.get_username()}"[:300],
            enqueued_at=None, finished_at=None,
        )
        skipped = selected - retried - len(already_sent)
        if retried:
            self.message_user(
                request, f"{retried} follow-up(s) queued to run now; the worker re-checks the lead, consent and business hours first.",
                messages.SUCCESS,
            )
        if already_sent:
            self.message_user(
                request, f"Not retried, a message was already created for job(s) {', '.join(map(str, already_sent))}: "
                "retrying could send it twice.", messages.WARNING,
            )
        if skipped:
            self.message_user(request, f"{skipped} job(s) skipped: only failed or cancelled follow-ups can be retried.", messages.WARNING)

    @admin.action(description="Cancel (pending or enqueued jobs)", permissions=["operate"])
    def cancel(self, request, queryset) -> None:
        # ENQUEUED is safe to cancel: the worker only claims ENQUEUED or RUNNING rows. RUNNING
        # belongs to a worker mid-send and is left to finish.
        selected = queryset.count()
        cancelled = ScheduledJob.objects.filter(
            pk__in=queryset.values("pk"), status__in=[ScheduledJob.Status.PENDING, ScheduledJob.Status.ENQUEUED],
        ).update(
            status=ScheduledJob.Status.CANCELLED, reason=f"cancelled by {request.user.get_username()}"[:300], finished_at=timezone.now(),
        )
        skipped = selected - cancelled
        if cancelled:
            self.message_user(request, f"{cancelled} job(s) cancelled.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} job(s) skipped: only pending or enqueued jobs can be cancelled.", messages.WARNING)
