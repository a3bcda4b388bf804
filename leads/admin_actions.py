"""The leads list's actions: reassign, resend the greeting, retry the CRM sync.

Each reports what it did, lead by lead where it matters, with `message_user`,
and leaves an entry on each lead's timeline it changed. The queryset they get
is already limited to the user's organization (swiftex/admin_tenancy.py), so
ids of another organization's leads posted to the list change nothing.
"""

from __future__ import annotations

from collections import defaultdict

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.template.response import TemplateResponse
from django.utils import timezone

from conversations import greeting_resend, timeline
from crmsync import queue as crm_queue
from crmsync.models import ContactSync
from routing import services as routing
from routing.models import Assignment, Rep

MAX_LEADS_PER_ACTION = 500  # one transaction (or provider call) each: keep an action within a request's time


def _too_many(modeladmin, request, queryset: QuerySet) -> bool:
    if queryset.count() > MAX_LEADS_PER_ACTION:
        modeladmin.message_user(
            request, f"Select at most {MAX_LEADS_PER_ACTION} leads at a time (narrow the list with its filters).", messages.ERROR,
        )
        return True
    return False


def _ids(leads) -> str:
    return ", ".join(str(lead.pk) for lead in leads)


# --- Reassign -------------------------------------------------------------------------------------


class ReassignForm(forms.Form):
    rep = forms.ModelChoiceField(queryset=Rep.objects.none(), label="New owner", empty_label=None)
    reason = forms.CharField(required=False, max_length=200, help_text="Shown on each lead's timeline.")

    def __init__(self, *args, organization_id: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["rep"].queryset = (
            Rep.objects.filter(organization_id=organization_id, user__is_active=True)
            .select_related("user").order_by("user__first_name", "user__last_name", "user__username")
        )


@admin.action(description="Reassign to another rep…", permissions=["change"])
def reassign(modeladmin, request, queryset):
    if _too_many(modeladmin, request, queryset):
        return None
    leads = list(queryset.select_related("organization", "contact").order_by("pk"))  # the page names each lead's contact
    organizations = {lead.organization_id for lead in leads}
    if len(organizations) != 1:
        modeladmin.message_user(
            request, f"The selected leads belong to {len(organizations)} organizations; reassign one organization's leads "
            "at a time (a lead can only go to a rep of its own organization).", messages.ERROR,
        )
        return None
    org = leads[0].organization
    form = ReassignForm(request.POST if "apply" in request.POST else None, organization_id=org.pk)
    if form.is_bound and form.is_valid():
        _reassign(modeladmin, request, leads, form.cleaned_data["rep"], form.cleaned_data["reason"])
        return None  # back to the list, with the messages
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": f"Reassign {len(leads)} lead(s) of {org}",
        "opts": modeladmin.model._meta,
        "leads": leads,
        "form": form,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": modeladmin.media,
    }
    return TemplateResponse(request, "admin/leads/lead/reassign.html", context)


def _reassign(modeladmin, request, leads, rep: Rep, reason: str) -> None:
    by = request.user.get_username()
    held = dict(Assignment.objects.filter(lead_id__in=[lead.pk for lead in leads]).values_list("lead_id", "rep_id"))
    already = [lead for lead in leads if held.get(lead.pk) == rep.pk]
    moved = [lead for lead in leads if held.get(lead.pk) != rep.pk]
    for lead in moved:
        # The service writes "lead.reassigned" on the timeline and notifies the new owner.
        routing.reassign(lead, rep, by=by, reason=reason or "reassigned in admin")
    if moved:
        modeladmin.message_user(request, f"{len(moved)} lead(s) reassigned to {rep}: {_ids(moved)}.", messages.SUCCESS)
    if already:
        modeladmin.message_user(request, f"{len(already)} lead(s) already held by {rep}, left as they are: {_ids(already)}.",
                                messages.INFO)


# --- Resend the greeting --------------------------------------------------------------------------


@admin.action(description="Resend the greeting (failed or never sent)", permissions=["change"])
def resend_greeting(modeladmin, request, queryset) -> None:
    if _too_many(modeladmin, request, queryset):
        return
    by = request.user.get_username()
    queued, refused = [], defaultdict(list)
    for lead in queryset.select_related("organization", "contact").order_by("pk"):
        outcome = greeting_resend.resend(lead, by=by)
        (queued.append(lead) if outcome.queued else refused[outcome.reason].append(lead))
    if queued:
        modeladmin.message_user(
            request, f"Greeting queued again for {len(queued)} lead(s): {_ids(queued)}. It goes out as a new lead's would "
            "(consent and channels are checked again); the timeline shows how it went.", messages.SUCCESS,
        )
    for reason, leads in refused.items():
        modeladmin.message_user(request, f"Not resent, {reason}: lead(s) {_ids(leads)}.", messages.WARNING)


# --- Retry the CRM sync ---------------------------------------------------------------------------


@admin.action(description="Retry the CRM sync (failed or dead-lettered)", permissions=["change"])
def retry_crm_sync(modeladmin, request, queryset) -> None:
    if _too_many(modeladmin, request, queryset):
        return
    leads = list(queryset.order_by("pk"))
    syncs = dict(ContactSync.objects.filter(contact_id__in={lead.contact_id for lead in leads}).values_list("contact_id", "pk"))
    retried_syncs = {sync_id for sync_id in set(syncs.values()) if crm_queue.retry_now([sync_id])}  # one guarded UPDATE each
    retried = [lead for lead in leads if syncs.get(lead.contact_id) in retried_syncs]
    never = [lead for lead in leads if lead.contact_id not in syncs]
    fine = [lead for lead in leads if lead.contact_id in syncs and syncs[lead.contact_id] not in retried_syncs]
    now, by = timezone.now(), request.user.get_username()
    timeline.record_many([(lead.pk, "crm.retried", {"by": by}, now) for lead in retried])
    if retried:
        modeladmin.message_user(request, f"CRM sync queued again for {len(retried)} lead(s): {_ids(retried)}; "
                                "they go with the next push.", messages.SUCCESS)
    if fine:
        modeladmin.message_user(request, f"Not retried, the CRM sync of lead(s) {_ids(fine)} is not failed or dead-lettered.",
                                messages.INFO)
    if never:
        modeladmin.message_user(request, f"Not retried, lead(s) {_ids(never)} were never queued for a CRM "
                                "(is CRM sync on for the organization?).", messages.WARNING)

