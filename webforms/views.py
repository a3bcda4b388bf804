"""The public form pages: the hosted form, its thank-you page, and the embed script.

Server-rendered and complete without JavaScript. The only script on the page
tells an embedding page its height.

CSRF: the form view is exempt, on purpose. It is posted from iframes on the
customers' own sites, where browsers withhold or partition our cookies, so
Django's cookie-based token would refuse real visitors. And there is nothing
for a forged request to borrow: the view reads no session, cookie or login;
a cross-site POST can do exactly what anyone can do by filling in the form.
What protects the form is the honeypot and the rate limits (per client IP and
the organization's ingest limit). See docs/web-forms.md.
"""

from __future__ import annotations

from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from leads.throttle import take_ingest_tokens
from swiftex import metrics
from webforms import protection
from webforms.models import WebForm
from webforms.pages import form_fields
from webforms.services import tracking_from, webform_submit

EMBED_CACHE_SECONDS = 300  # the script only knows the form's address and title
# The page loads its own stylesheet and script and nothing else; who may frame it is per form.
_POLICY = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'"


def _active_form(slug: str) -> WebForm | None:
    return WebForm.objects.select_related("organization").filter(slug=slug, is_active=True).first()


def _page(request, template: str, context: dict, *, form: WebForm | None, status: int = 200) -> HttpResponse:
    response = render(request, template, context, status=status)
    # Framed by the embed snippet: X-Frame-Options would forbid every site, so this page
    # says who may frame it with frame-ancestors instead (any site, unless the form lists some).
    ancestors = " ".join(["'self'", *form.origins]) if form and form.origins else "*"
    response["Content-Security-Policy"] = f"{_POLICY}; frame-ancestors {ancestors}"
    response.xframe_options_exempt = True
    response["Cache-Control"] = "no-store"  # per visitor: their tracking values, their answers
    return response


def _not_found(request) -> HttpResponse:
    return _page(request, "webforms/not_found.html", {}, form=None, status=404)


@csrf_exempt
@require_http_methods(["GET", "HEAD", "POST"])
def form_page(request, slug: str) -> HttpResponse:
    form = _active_form(slug)
    if form is None:
        return _not_found(request)
    if request.method == "POST":
        return _submit(request, form)
    tracking = tracking_from(request.GET, page_url=request.build_absolute_uri(), referrer=request.META.get("HTTP_REFERER", ""))
    return _form(request, form, values={}, errors={}, tracking=tracking, embedded=request.GET.get("embed") == "1")


def _submit(request, form: WebForm) -> HttpResponse:
    received_at = timezone.now()
    posted = request.POST
    embedded = posted.get("embed") == "1"
    per_client = protection.take_ip_token(request)
    if not per_client.allowed:
        return _too_many(request, form, per_client, reason="ip_rate_limited", embedded=embedded)
    if protection.is_bot(posted):
        # Stored nowhere, and answered like any submission, so the bot learns nothing.
        metrics.INGEST_REJECTED.labels(reason="honeypot").inc()
        return _thanks_redirect(form, embedded)
    per_organization = take_ingest_tokens(form.organization)  # the API's bucket: one limit per organization
    if not per_organization.allowed:
        return _too_many(request, form, per_organization, reason="rate_limited", embedded=embedded)
    outcome = webform_submit(form=form, posted=posted, received_at=received_at)
    if outcome.errors:
        return _form(request, form, values=posted, errors=outcome.errors, tracking=tracking_from(posted), embedded=embedded, status=400)
    return _thanks_redirect(form, embedded)


def _too_many(request, form: WebForm, decision, *, reason: str, embedded: bool) -> HttpResponse:
    """429 with Retry-After, on the form itself with the visitor's answers kept: a person can just wait and send."""
    metrics.INGEST_REJECTED.labels(reason=reason).inc()
    wait = decision.retry_after_header
    response = _form(
        request, form, values=request.POST, errors={}, tracking=tracking_from(request.POST), embedded=embedded, status=429,
        problem=f"Too many submissions right now. Please wait {wait} seconds and send the form again.",
    )
    response["Retry-After"] = wait
    return response


def _thanks_redirect(form: WebForm, embedded: bool) -> HttpResponse:
    response = HttpResponseRedirect(f"{form.path}/thanks" + ("?embed=1" if embedded else ""))
    response.status_code = 303  # POST → GET: a reload of the thank-you page sends nothing again
    return response


def _form(request, form: WebForm, *, values, errors: dict, tracking: dict, embedded: bool, status: int = 200,
          problem: str = "") -> HttpResponse:
    fields = form_fields(form, values, errors)
    context = {
        "form": form,
        "org_name": form.organization.name,  # the one organization field a page shows
        "fields": fields,
        "field_errors": [f for f in fields if f.errors],
        "form_errors": errors.get("__all__", []),
        "problem": problem,
        "consent": values.get("consent") == "yes",
        "tracking": sorted(tracking.items()),
        "embedded": embedded,
        "honeypot": protection.HONEYPOT_FIELD,
    }
    return _page(request, "webforms/form.html", context, form=form, status=status)


@require_GET
def thanks(request, slug: str) -> HttpResponse:
    form = _active_form(slug)
    if form is None:
        return _not_found(request)
    context = {"form": form, "org_name": form.organization.name, "embedded": request.GET.get("embed") == "1"}
    return _page(request, "webforms/thanks.html", context, form=form)


@require_GET
def embed_js(request, slug: str) -> HttpResponse:
    form = _active_form(slug)
    if form is None:
        return HttpResponse("/* Swiftex: no active web form at this address. */\n", status=404, content_type="text/javascript")
    response = render(request, "webforms/embed.js", {"form": form}, content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = f"public, max-age={EMBED_CACHE_SECONDS}"
    response["Access-Control-Allow-Origin"] = "*"  # a public script; lets sites load it with integrity/crossorigin
    return response
