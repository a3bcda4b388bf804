"""Conversations with contacts: one per contact and channel, their messages, and greetings.

A `Greeting` is the first touch of one lead: at most one per lead (unique),
so however often its `lead.created` event is delivered, the lead is greeted
once. Its text is sent as one `Message` per channel, at most one per channel
(unique greeting + channel): WhatsApp first, SMS only once WhatsApp has
definitively failed.

A message's status only moves forward (see `FORWARD_ORDER`): a duplicated or
late status webhook never walks it back.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import models
from django.db.models import Q
from django.utils import timezone

from leads.models import Contact, Lead, Organization

# Meta lets a business send free-form text only within 24 hours of the
# contact's last inbound message; outside it, an approved template.
CUSTOMER_SERVICE_WINDOW = timedelta(hours=24)


class Channel(models.TextChoices):
    WHATSAPP = "whatsapp", "WhatsApp"
    SMS = "sms", "SMS"


class Conversation(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="conversations")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="conversations")
    channel = models.CharField(max_length=16, choices=Channel.choices)
    last_inbound_at = models.DateTimeField(
        null=True, blank=True, help_text="The contact's last message to us; opens the 24-hour customer-service window."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["contact", "channel"], name="conversation_per_contact_channel")]

    def __str__(self) -> str:
        return f"{self.get_channel_display()} with {self.contact_id}"

    def window_open(self) -> bool:
        return window_open(self.last_inbound_at)


def window_open(last_inbound_at, now=None) -> bool:
    """Free-form WhatsApp is allowed: the contact wrote to us within the last 24 hours."""
    now = now or timezone.now()
    return last_inbound_at is not None and now - last_inbound_at < CUSTOMER_SERVICE_WINDOW


class Greeting(models.Model):
    """The first touch of a lead: its text, where the text came from, and how it went."""

    class State(models.TextChoices):
        SENDING = "sending", "Sending"
        DONE = "done", "Accepted by a provider"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Failed on every channel"

    class TextSource(models.TextChoices):
        AI = "ai", "AI model"
        TEMPLATE = "template", "Organization template"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="greetings")
    lead = models.OneToOneField(Lead, on_delete=models.CASCADE, related_name="greeting")
    state = models.CharField(max_length=16, choices=State.choices, default=State.SENDING)
    reason = models.CharField(max_length=200, blank=True, default="", help_text="Why it was skipped or failed.")
    text = models.TextField(blank=True, default="")
    text_source = models.CharField(max_length=16, choices=TextSource.choices, blank=True, default="")
    model_ms = models.PositiveIntegerField(null=True, blank=True, help_text="How long the model took (or was given).")
    model_error = models.CharField(max_length=300, blank=True, default="", help_text="Why the AI text was not used.")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"greeting for lead {self.lead_id} ({self.state})"


class Message(models.Model):
    class Direction(models.TextChoices):
        OUTBOUND = "outbound", "Outbound"
        INBOUND = "inbound", "Inbound"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"  # not with the provider (yet, or it refused for now): safe to send
        SENDING = "sending", "Sending"  # handed to the provider; outcome not known yet
        ACCEPTED = "accepted", "Accepted by provider"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        READ = "read", "Read"
        FAILED = "failed", "Failed"
        RECEIVED = "received", "Received"  # inbound

    # A message row is written six times (queued, sending, accepted, sent, delivered, read)
    # and every write adds an entry to each of its indexes. So no foreign key gets an index
    # of its own where a composite index starts with it, and the keys that are almost
    # always empty are indexed only where set (Meta.indexes); see bench/README.md.
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="messages")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False)
    lead = models.ForeignKey(Lead, on_delete=models.SET_NULL, null=True, blank=True, related_name="messages", db_index=False)
    greeting = models.ForeignKey(Greeting, on_delete=models.CASCADE, null=True, blank=True, related_name="messages", db_index=False)
    # An outbound reply (one message per Reply), or the follow-up a scheduled job sent (one per job).
    reply = models.OneToOneField("Reply", on_delete=models.CASCADE, null=True, blank=True, related_name="message")
    scheduled_job = models.OneToOneField("ScheduledJob", on_delete=models.CASCADE, null=True, blank=True, related_name="message")
    # An inbound message: the reply that answered it (set when a debounced burst is taken).
    answered_by = models.ForeignKey(
        "Reply", on_delete=models.SET_NULL, null=True, blank=True, related_name="answered_messages", db_index=False
    )
    sent_by = models.ForeignKey(
        "routing.Rep", on_delete=models.SET_NULL, null=True, blank=True, related_name="+", help_text="The rep who wrote it, if a person did.",
        db_index=False,
    )
    # The rep's form carries a random token: a double click or a resubmitted form finds the same message.
    client_token = models.UUIDField(null=True, blank=True, unique=True, editable=False)
    direction = models.CharField(max_length=16, choices=Direction.choices)
    channel = models.CharField(max_length=16, choices=Channel.choices)
    body = models.TextField(blank=True, default="")
    template_name = models.CharField(max_length=200, blank=True, default="")
    provider_message_id = models.CharField(
        max_length=128, null=True, blank=True, help_text="WhatsApp wamid or Twilio MessageSid."
    )
    status = models.CharField(max_length=16, choices=Status.choices)
    attempts = models.PositiveSmallIntegerField(default=0)
    error_code = models.CharField(max_length=32, blank=True, default="")
    error_title = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    sending_at = models.DateTimeField(null=True, blank=True, help_text="When the latest attempt was handed to the provider.")
    accepted_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider_message_id"], condition=Q(provider_message_id__isnull=False), name="message_provider_id"),
            models.UniqueConstraint(fields=["greeting", "channel"], condition=Q(greeting__isnull=False), name="one_greeting_message_per_channel"),
        ]
        indexes = [
            models.Index(fields=["conversation", "created_at"], name="message_conversation_idx"),
            # The sweep for greetings stuck without a provider answer or a status.
            models.Index(fields=["created_at"], name="message_unsent_idx", condition=Q(status__in=["queued", "sending", "accepted"])),
            # The sweep for inbound messages no reply has taken (their debounce state was lost).
            models.Index(fields=["created_at"], name="message_unanswered_idx", condition=Q(direction="inbound", answered_by__isnull=True)),
            models.Index(fields=["lead", "created_at"], name="message_lead_idx"),
            models.Index(fields=["answered_by"], name="message_answered_by_idx", condition=Q(answered_by__isnull=False)),
            models.Index(fields=["sent_by"], name="message_sent_by_idx", condition=Q(sent_by__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.direction} {self.channel} message {self.pk} ({self.status})"


# Statuses move only forward along this order (conversations/receipts.py
# applies it in SQL). FAILED is terminal and can replace anything short of
# DELIVERED (WhatsApp may report `failed` after `sent`); a message once
# delivered or read is never marked failed.
FORWARD_ORDER = (
    Message.Status.QUEUED, Message.Status.SENDING, Message.Status.ACCEPTED,
    Message.Status.SENT, Message.Status.DELIVERED, Message.Status.READ,
)


class StatusReceipt(models.Model):
    """A delivery status a provider reported, waiting to be applied (an inbox).

    The webhook only verifies the signature and stores the statuses here in one
    statement, so it answers in a millisecond or two however many arrive; the
    conversations lane applies them in batches (`receipts.apply_pending`) and
    deletes them. Durable: a status survives a crash between the two.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE)
    channel = models.CharField(max_length=16, choices=Channel.choices)
    provider_message_id = models.CharField(max_length=128)
    status = models.CharField(max_length=16)
    at = models.DateTimeField()
    callback = models.CharField(max_length=64, blank=True, default="")
    error_code = models.CharField(max_length=32, blank=True, default="")
    error_title = models.CharField(max_length=300, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.channel} {self.status} for {self.provider_message_id}"


class WebhookDelivery(models.Model):
    """A webhook a human should look at: rejected (bad signature) or failed while processing.

    Processed deliveries leave their effect on messages and the timeline, and a
    count in /metrics; at thousands of statuses a minute, a row each would be
    an audit table growing by gigabytes a day for no reader.
    """

    class Outcome(models.TextChoices):
        PROCESSED = "processed", "Processed"
        REJECTED = "rejected", "Rejected (bad signature)"
        FAILED = "failed", "Failed while processing"

    provider = models.CharField(max_length=32)
    organization = models.ForeignKey(Organization, on_delete=models.SET_NULL, null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    detail = models.CharField(max_length=300, blank=True, default="")
    body = models.TextField(blank=True, default="")
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["received_at"], name="webhook_delivery_age_idx")]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.provider} webhook {self.pk} ({self.outcome})"


class Reply(models.Model):
    """One answer to a burst of the contact's messages (debounced), or the one opt-out confirmation.

    Created when the burst is taken, before the model writes the text, so the
    inbound messages are claimed (`answered_by`) exactly once whoever flushes.
    """

    class Kind(models.TextChoices):
        REPLY = "reply", "Reply"
        OPT_OUT = "opt_out", "Opt-out confirmation"

    class State(models.TextChoices):
        COMPOSING = "composing", "Composing"
        SENDING = "sending", "Sending"
        DONE = "done", "Accepted by a provider"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Failed"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="replies")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="replies")
    lead = models.ForeignKey(Lead, on_delete=models.SET_NULL, null=True, blank=True, related_name="replies")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.REPLY)
    state = models.CharField(max_length=16, choices=State.choices, default=State.COMPOSING)
    reason = models.CharField(max_length=300, blank=True, default="", help_text="Why it was skipped or failed.")
    text = models.TextField(blank=True, default="")
    text_source = models.CharField(max_length=16, choices=Greeting.TextSource.choices, blank=True, default="")
    model_ms = models.PositiveIntegerField(null=True, blank=True)
    model_error = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "replies"
        indexes = [models.Index(fields=["created_at"], name="reply_unfinished_idx", condition=Q(state__in=["composing", "sending"]))]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.pk} ({self.state})"


class FollowUpSequence(models.Model):
    """Messages sent after the greeting while the lead stays silent; any reply from them ends it."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="followup_sequences")
    name = models.CharField(max_length=100)
    active = models.BooleanField(default=True, help_text="Started for every newly greeted lead while active.")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class FollowUpStep(models.Model):
    sequence = models.ForeignKey(FollowUpSequence, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField(default=1)
    delay_minutes = models.PositiveIntegerField(
        help_text="After the greeting went out: 1440 = one day. Moved into business hours if quiet hours are on."
    )
    channel = models.CharField(max_length=16, choices=Channel.choices, default=Channel.WHATSAPP)
    text = models.TextField(
        help_text="The message. Free-form inside WhatsApp's 24-hour window and by SMS; outside the window, the "
        "template's parameter. Placeholders: {first_name}, {name}, {organization}, {campaign}, {source}."
    )
    use_ai = models.BooleanField(
        default=True, help_text="Inside the 24-hour window, let the model write it from the conversation (text is the fallback)."
    )
    template_name = models.CharField(
        max_length=200, blank=True, default="",
        help_text="Approved WhatsApp template for when the window is closed. Empty: the organization's greeting template.",
    )
    template_language = models.CharField(max_length=16, blank=True, default="", help_text="Empty: the organization's.")

    class Meta:
        ordering = ["sequence", "position"]
        constraints = [models.UniqueConstraint(fields=["sequence", "position"], name="followup_step_position")]

    def __str__(self) -> str:
        return f"{self.sequence} step {self.position}"


class ScheduledJob(models.Model):
    """Work due at a moment, possibly days ahead: durable here, enqueued only when due.

    The scheduler claims due rows (SKIP LOCKED), marks them ENQUEUED and puts a
    task on the follow-up lane; the task re-checks everything before acting.
    A follow-up is unique per lead and step, and its message unique per job, so
    however often it is enqueued it is sent once. Timeouts are one live row per
    lead and kind, moved forward by activity.
    """

    class Kind(models.TextChoices):
        FOLLOWUP = "followup", "Follow-up"
        INACTIVITY = "inactivity", "Inactivity timeout"
        SESSION_EXPIRY = "session_expiry", "Session expiry (24-hour window closes)"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ENQUEUED = "enqueued", "Enqueued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Cancelled"
        FAILED = "failed", "Failed"

    LIVE = (Status.PENDING, Status.ENQUEUED, Status.RUNNING)

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="scheduled_jobs")
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="scheduled_jobs", db_index=False)  # job_lead_status_idx
    kind = models.CharField(max_length=16, choices=Kind.choices)
    step = models.ForeignKey(FollowUpStep, on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs")
    due_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    reason = models.CharField(max_length=300, blank=True, default="", help_text="Why it was cancelled, deferred or failed.")
    created_at = models.DateTimeField(default=timezone.now)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["lead", "step"], condition=Q(step__isnull=False), name="one_job_per_lead_step"),
            models.UniqueConstraint(
                fields=["lead", "kind"], condition=Q(kind__in=["inactivity", "session_expiry"], status__in=["pending", "enqueued", "running"]),
                name="one_live_timeout_per_lead_kind",
            ),
        ]
        indexes = [
            models.Index(fields=["due_at"], name="job_due_idx", condition=Q(status="pending")),
            models.Index(fields=["enqueued_at"], name="job_enqueued_idx", condition=Q(status__in=["enqueued", "running"])),
            models.Index(fields=["lead", "status"], name="job_lead_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for lead {self.lead_id} ({self.status})"
