"""Admin: greetings and messages with their provider outcome, and every webhook received."""

from __future__ import annotations

from django.contrib import admin

from conversations.models import Conversation, Greeting, Message, WebhookDelivery


class ReadOnlyAdmin(admin.ModelAdmin):
    """What providers and workers wrote: visible, not editable."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Greeting)
class GreetingAdmin(ReadOnlyAdmin):
    list_display = ("lead", "organization", "state", "text_source", "model_ms", "reason", "created_at")
    list_filter = ("state", "text_source", "organization")
    search_fields = ("lead__contact__phone", "lead__contact__email")


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("pk", "organization", "direction", "channel", "status", "error_code", "error_title", "attempts", "created_at")
    list_filter = ("status", "channel", "direction", "organization")
    search_fields = ("provider_message_id", "conversation__contact__phone")


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    list_display = ("contact", "organization", "channel", "last_inbound_at", "created_at")
    list_filter = ("channel", "organization")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("pk", "provider", "organization", "outcome", "detail", "received_at")
    list_filter = ("provider", "outcome")
