"""What every provider client shares: the HTTP session and the error type."""

from __future__ import annotations

import random
import threading
import time
import urllib.request
from dataclasses import dataclass

import requests
import urllib3
from django.conf import settings

from swiftex import metrics

USER_AGENT = "Swiftex/1.0 (+first-touch)"


class ProviderError(Exception):
    """A provider call that did not succeed.

    `permanent`: retrying cannot help (bad number, expired token, policy);
    otherwise the call may succeed later, no sooner than `retry_after`
    seconds when the provider said so.
    `maybe_delivered`: the request reached the provider and we never heard
    back (a read timeout), so it may have been accepted; resending could
    message the person twice, so the caller must not blindly retry.
    """

    def __init__(
        self,
        provider: str,
        title: str,
        *,
        code: str = "",
        permanent: bool,
        retry_after: float | None = None,
        maybe_delivered: bool = False,
    ) -> None:
        super().__init__(f"{provider} {code}: {title}" if code else f"{provider}: {title}")
        self.provider = provider
        self.title = title[:300]
        self.code = str(code)
        self.permanent = permanent
        self.retry_after = retry_after
        self.maybe_delivered = maybe_delivered


@dataclass(frozen=True)
class Sent:
    """A provider accepted a message: its id (wamid, MessageSid)."""

    provider_message_id: str


_local = threading.local()


def session() -> requests.Session:
    """A per-thread session (keep-alive pools are not shared across threads)."""
    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
        s.headers["User-Agent"] = USER_AGENT
        s.max_redirects = 0
        # Reading proxy settings from the environment on every request cost ~3 ms
        # of CPU per call (profiled); skip it unless a proxy is actually configured.
        s.trust_env = any(urllib.request.getproxies().get(scheme) for scheme in ("http", "https"))
    return s


def jittered_backoff(attempt: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt` + 1: exponential from `base`, capped at `cap`, times a
    random 0.5-1 (so workers do not retry in step); never sooner than the provider asked."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return max(retry_after or 0.0, random.uniform(ceiling / 2, ceiling))


def one_line(text: str, limit: int) -> str:
    """`text` with each run of whitespace made one space, cut at a word to at most `limit` characters."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rsplit(" ", 1)[0] + "…"
    return text


def timeout() -> tuple[float, float]:
    return settings.PROVIDER_CONNECT_TIMEOUT_SECONDS, settings.PROVIDER_READ_TIMEOUT_SECONDS


def post(provider: str, url: str, **kwargs) -> requests.Response:
    """POST with the mandatory timeout and no redirects; network failures become ProviderError.

    Only a failure to connect proves the provider never saw the request (safe
    to resend). Anything after the request went out (a reset, a read timeout,
    a broken answer) may hide an accepted message: `maybe_delivered`.
    Every call is timed in swiftex_provider_call_duration_seconds.
    """
    started = time.perf_counter()
    try:
        response = session().post(url, timeout=timeout(), allow_redirects=False, **kwargs)
    except (*_NEVER_SENT, UnicodeEncodeError) as exc:
        # Not chained: the exception's text can hold the header it refused, i.e. a token.
        metrics.provider_unanswered(provider, started, "invalid_request")
        raise ProviderError(provider, f"request could not be sent ({type(exc).__name__}): check the credentials "
                                      "and base URL for stray spaces, line breaks or a missing scheme", permanent=True) from None
    except requests.RequestException as exc:
        outcome, error = _network_error(provider, exc)
        metrics.provider_unanswered(provider, started, outcome)
        raise error from exc
    metrics.provider_answered(provider, started, response.status_code)
    return response


# Raised by requests before anything goes on the wire (a token pasted with a line break,
# a base URL without a scheme; a token outside latin-1 raises UnicodeEncodeError): no
# message can have left, and the same request will fail again.
_NEVER_SENT = (
    requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
)


def _network_error(provider: str, exc: requests.RequestException) -> tuple[str, ProviderError]:
    """(metric outcome, error) for a call that got no HTTP answer."""
    if isinstance(exc, requests.ConnectTimeout):
        return "timeout", ProviderError(provider, "connect timeout", permanent=False)
    if isinstance(exc, requests.ConnectionError):
        if _never_connected(exc):
            return "network_error", ProviderError(provider, f"could not connect: {type(exc).__name__}", permanent=False)
        return "network_error", ProviderError(provider, "connection lost after sending", permanent=False, maybe_delivered=True)
    if isinstance(exc, requests.Timeout):
        return "timeout", ProviderError(provider, "no answer within the read timeout", permanent=False, maybe_delivered=True)
    return "network_error", ProviderError(provider, f"broken answer: {type(exc).__name__}", permanent=False, maybe_delivered=True)


def _never_connected(exc: requests.ConnectionError) -> bool:
    reason = getattr(exc.args[0], "reason", exc.args[0]) if exc.args else None
    return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))


def retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def classify(provider: str, response: requests.Response, *, code: object, title: str,
             permanent_codes: set, transient_codes: set) -> ProviderError:
    """A provider's error answer as a ProviderError: its own codes first, then HTTP status.

    5xx and 429 may pass; any other 4xx means the same request will be refused again.
    Counted in swiftex_provider_errors_total by the provider's code, else the HTTP status.
    """
    metrics.provider_error(provider, response.status_code if code is None else code)
    if code in permanent_codes:
        permanent = True
    elif code in transient_codes or response.status_code >= 500 or response.status_code == 429:
        permanent = False
    else:
        permanent = 400 <= response.status_code < 500
    return ProviderError(
        provider, title, code=str(code if code is not None else response.status_code), permanent=permanent,
        retry_after=retry_after_seconds(response),
    )
