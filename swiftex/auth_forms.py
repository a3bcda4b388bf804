"""The sign-in and password-reset forms, throttled (swiftex/login_throttle.py, swiftex/ratelimit.py).

Used by the reps' login page (/accounts/login/), Django admin's login and the
password reset page (swiftex/urls.py).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm
from django.core.exceptions import ValidationError

from swiftex import login_throttle, ratelimit
from swiftex.client_address import bucket_of, client_ip

logger = logging.getLogger(__name__)


class _ThrottledSignIn:
    """Refuse a locked account or address before checking the password; count each wrong one."""

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        ip = client_ip(self.request) if self.request is not None else ""
        if wait := login_throttle.wait_seconds(username, ip):
            raise ValidationError(login_throttle.refusal(wait), code="throttled")
        try:
            cleaned = super().clean()
        except ValidationError as exc:
            if getattr(exc, "code", None) == "invalid_login":
                login_throttle.failed(username, ip)
            raise
        if self.get_user() is not None:
            login_throttle.succeeded(username)
        return cleaned


class ThrottledAuthenticationForm(_ThrottledSignIn, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(_ThrottledSignIn, AdminAuthenticationForm):
    pass


class ThrottledPasswordResetForm(PasswordResetForm):
    """At most PASSWORD_RESETS_PER_HOUR reset e-mails per address asked for and per client.

    Over the limit nothing is sent, and the page says what it always says ("if an account
    exists, we sent an e-mail"), so the form neither floods a mailbox nor tells who has an account.
    """

    def save(self, *args, request=None, **kwargs):
        email = self.cleaned_data["email"]
        buckets = [f"password-reset:email:{login_throttle.digest(email)}"]
        if request is not None:
            buckets.append(f"password-reset:address:{bucket_of(client_ip(request))}")
        rate = settings.PASSWORD_RESETS_PER_HOUR / 3600
        if not all([ratelimit.take(b, rate_per_second=rate, capacity=settings.PASSWORD_RESETS_PER_HOUR).allowed for b in buckets]):
            logger.warning("password reset not sent: over PASSWORD_RESETS_PER_HOUR for this address or client")
            return
        return super().save(*args, request=request, **kwargs)
