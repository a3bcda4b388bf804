"""Rep pages: "My leads", the lead page with its timeline and reply box, and live updates.

Server-rendered and usable without JavaScript; a few lines of script poll a
fragment for news (reps/static/reps/live.js). Every view starts from the
rep's visible leads (reps/selectors.py): another organization's lead, or a
colleague's when the organization keeps leads private, is a 404.
"""

from __future__ import annotations

import uuid
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from conversations.rep_messages import CannotSend, mode, options
from leads.models import Lead
from reps import selectors, services
from routing.models import Notification, Rep
from swiftex.db import clean_text


def rep_required(view):
    """Logged in, and a rep of an organization (a login without one sees nothing).

    Pages are never cached (Back after logging out shows nothing private), and
    times show in the rep's time zone (else the organization's). A live update
    whose session ended gets 401, which the page's script answers by reloading
    into the login page, instead of the login page drawn inside the lead page.
    """

    @never_cache
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not request.user.is_authenticated:
            if request.headers.get("X-Requested-With") == "fetch":
                return HttpResponse("Log in again.", status=401, content_type="text/plain")
            return redirect_to_login(request.get_full_path())
        rep = Rep.objects.select_related("organization", "user").filter(user=request.user).first()
        if rep is None:
            raise PermissionDenied("This login is not a rep of any organization. Ask your admin to add you.")
        request.rep = rep
        with timezone.override(rep.timezone or rep.organization.timezone):
            return view(request, *args, **kwargs)

    return wrapper


def _filters(request: HttpRequest) -> selectors.Filters:
    rep = request.rep
    return selectors.Filters(
        status=request.GET.get("status", "open"),
        mine=request.GET.get("scope", "mine") == "mine" or not selectors.can_see_everyone(rep),
        source=clean_text(request.GET.get("source", ""), 64),
        q=clean_text(request.GET.get("q", ""), 100),
    )


@require_GET
@rep_required
def lead_list(request: HttpRequest) -> HttpResponse:
    filters = _filters(request)
    page = Paginator(selectors.lead_list(request.rep, filters), selectors.PAGE_SIZE).get_page(request.GET.get("page"))
    rows = {"page": page, "filters": filters, "waiting": selectors.last_inbound_leads([lead.pk for lead in page]), "me": request.rep}
    if request.GET.get("partial"):  # the list's own refresh: the rows alone
        return render(request, "reps/_lead_rows.html", rows)
    return render(request, "reps/lead_list.html", {
        **rows, "statuses": Lead.Status.choices, "sources": selectors.sources(request.rep),
        "can_see_everyone": selectors.can_see_everyone(request.rep), **chrome(request),
    })


def _lead_or_404(request: HttpRequest, lead_id: int) -> Lead:
    lead = selectors.lead_for(request.rep, lead_id)
    if lead is None:
        raise Http404("No such lead.")
    return lead


@require_GET
@rep_required
def lead_detail(request: HttpRequest, lead_id: int) -> HttpResponse:
    lead = _lead_or_404(request, lead_id)
    Notification.objects.filter(rep=request.rep, lead=lead, read_at__isnull=True).update(read_at=timezone.now())
    reply = options(lead)
    return render(request, "reps/lead_detail.html", {
        **_lead_context(lead), "reply": reply, "reply_mode": mode(reply), "token": uuid.uuid4(), **chrome(request),
    })


@require_GET
@rep_required
def lead_live(request: HttpRequest, lead_id: int) -> HttpResponse:
    """The changing part of the lead page; 204 when nothing changed since version `v`."""
    lead = _lead_or_404(request, lead_id)
    version = selectors.version(lead)
    if request.GET.get("v") == version:
        return HttpResponse(status=204)
    response = render(request, "reps/_lead_live.html", _lead_context(lead, version))
    response["X-Version"] = version
    return response


@require_POST
@rep_required
def lead_reply(request: HttpRequest, lead_id: int) -> HttpResponse:
    lead = _lead_or_404(request, lead_id)
    try:
        token = uuid.UUID(request.POST.get("token", ""))
    except ValueError:
        messages.error(request, "The form was incomplete; reload the page and try again.")
        return redirect("reps:lead", lead_id=lead.pk)
    try:
        services.reply(lead=lead, rep=request.rep, body=request.POST.get("body", ""), token=token,
                       offered=request.POST.get("mode"))
    except CannotSend as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Message queued; its delivery status appears below.")
    return redirect("reps:lead", lead_id=lead.pk)


@require_POST
@rep_required
def lead_status(request: HttpRequest, lead_id: int) -> HttpResponse:
    lead = _lead_or_404(request, lead_id)
    try:
        services.change_status(lead=lead, by=str(request.rep), status=request.POST.get("status", ""))
    except services.NotAllowed as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Lead marked {lead.get_status_display().lower()}.")
    return redirect("reps:lead", lead_id=lead.pk)


@require_GET
@rep_required
def notifications(request: HttpRequest) -> HttpResponse:
    items = list(Notification.objects.filter(rep=request.rep).order_by("-created_at")[:100])
    Notification.objects.filter(rep=request.rep, read_at__isnull=True).update(read_at=timezone.now())
    return render(request, "reps/notifications.html", {"items": items, **chrome(request)})


def _lead_context(lead: Lead, version: str | None = None) -> dict:
    """What the live part of the lead page shows (the reply box is outside it)."""
    return {
        "lead": lead, "contact": lead.contact, "assignment": getattr(lead, "assignment", None),
        "version": version or selectors.version(lead), "statuses": Lead.Status.choices,
        **selectors.lead_page(lead),
    }


def chrome(request: HttpRequest) -> dict:
    """What every page's header shows."""
    return {
        "rep": request.rep,
        "unread": Notification.objects.filter(rep=request.rep, read_at__isnull=True).count(),
        "poll_seconds": settings.REP_PAGES_POLL_SECONDS,
    }
