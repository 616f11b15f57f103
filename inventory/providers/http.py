"""The one HTTP path every adapter goes through.

``request()`` owns everything that is the same for every provider: the rate limiter, the explicit
timeout, Bearer auth, 429 backoff, and turning transport failures, 5xx and 401/403 into typed
errors. It hands every other answer (2xx and the remaining 4xx) back as an ``ApiResponse`` so the
adapter can map its provider's own error codes (Vast ``no_such_ask``, TensorDock's in-body errors).

Waiting: a 429 calls ``limiter.penalize()``, which pushes the limiter's next slot out; the retry
then waits in ``limiter.wait()``. There is no other sleep here, so tests stub the limiter.

Secrets: the API key only ever travels in the ``Authorization`` header (never in a URL, which
``requests`` puts into exception messages), and every text we put into a message is redacted.
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
from prometheus_client import Counter, Histogram, values

from .base import AuthFailed, RateLimited, Transient

if TYPE_CHECKING:
    from .base import Provider

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 60.0  # same cap as the vastai 1.9.1 client
SNIPPET_CHARS = 300
# A 429 with one of these JSON error codes is a quota (Vast's daily search quota resets at UTC
# midnight), not a throttle: retrying within seconds cannot help, so it is raised at once.
QUOTA_ERROR_CODES = frozenset({"search_quota_exceeded"})
MONEY_PLACES = Decimal("0.0001")

# Per-process provider call metrics (shopper/metrics.py exposes them on /metrics). One sample per
# HTTP attempt: a 429 that is retried counts once as rate_limited, then once for the retry.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Multiprocess mode names each process's file by pid, but docker-compose shares the directory
    # between containers, whose pids repeat: two processes writing one file would corrupt it.
    # Host name plus pid is unique. Set before the first .labels() call creates a value.
    _host = socket.gethostname().replace("_", "-")  # "_" separates the file name's parts
    values.ValueClass = values.MultiProcessValue(lambda: f"{_host}-{os.getpid()}")
PROVIDER_REQUESTS = Counter(
    "shopper_provider_requests",
    "Provider API calls by provider, operation and outcome.",
    ["provider", "operation", "outcome"],
)
PROVIDER_REQUEST_SECONDS = Histogram(
    "shopper_provider_request_seconds",
    "Provider API call latency in seconds (one HTTP attempt).",
    ["provider", "operation"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
_VERSION_SEGMENT = re.compile(r"^v\d+$")
# Collections whose next path segment is always an id, whatever it looks like.
_ID_AFTER = frozenset({"asks", "instances", "bundles", "machines", "templates"})


def operation_name(method: str, path: str) -> str:
    """``method`` plus the path as a template without ids: ``GET /api/v0/instances/{id}/``.

    A segment is an id when it follows a known collection name or contains a digit (API version
    segments such as ``v0`` excepted), so label values stay few whatever ids the calls carry.
    """
    parts = path.split("?", 1)[0].split("/")
    out: list[str] = []
    for i, seg in enumerate(parts):
        previous = parts[i - 1] if i else ""
        is_id = seg and (
            previous in _ID_AFTER or (any(c.isdigit() for c in seg) and not _VERSION_SEGMENT.match(seg))
        )
        out.append("{id}" if is_id else seg)
    return f"{method.upper()} {'/'.join(out)}"


def _outcome(status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth_failed"
    if status >= 500:
        return "server_error"
    return "client_error"


def _record(provider_name: str, operation: str, outcome: str, started: float) -> None:
    try:
        PROVIDER_REQUESTS.labels(provider_name, operation, outcome).inc()
        PROVIDER_REQUEST_SECONDS.labels(provider_name, operation).observe(time.monotonic() - started)
    except Exception:  # metrics must never break a provider call
        log.debug("provider metrics not recorded", exc_info=True)


@dataclass
class ApiResponse:
    """A provider answer that was not handled generically. ``data`` is the parsed JSON or None."""

    status: int
    text: str
    data: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error_code(self) -> str:
        """The ``error`` field when it is a string (Vast's error codes), else ""."""
        if isinstance(self.data, dict) and isinstance(self.data.get("error"), str):
            return self.data["error"].strip()
        return ""


def redact(text: str, secret: str | None, limit: int = SNIPPET_CHARS) -> str:
    """Remove the secret from ``text`` and truncate it for use in an error message."""
    text = text or ""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    text = text.strip()
    if len(text) > limit:
        text = text[:limit] + "..."
    return text


def describe(provider: Provider, method: str, path: str, resp: ApiResponse, what: str = "") -> str:
    """A one-line error message with the raw body (truncated, redacted)."""
    head = f"{provider.name} {method} {path}"
    if what:
        head += f": {what}"
    return f"{head} (HTTP {resp.status}): {redact(resp.text, provider.api_key)}"


def to_money(value: Any) -> Decimal | None:
    """A JSON number as a Decimal with 4 places, via ``str()`` so no float artefacts leak in."""
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    if not amount.is_finite():
        return None
    return amount.quantize(MONEY_PLACES, rounding=ROUND_HALF_UP)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (number or HTTP date), capped at MAX_RETRY_AFTER."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, min(MAX_RETRY_AFTER, seconds))


def _quota_reset_in(headers: Mapping[str, str]) -> float | None:
    reset = headers.get("X-RateLimit-Reset")
    try:
        return max(0.0, float(reset) - time.time()) if reset else None
    except ValueError:
        return None


def _parse(resp: requests.Response) -> ApiResponse:
    text = resp.text or ""
    data: Any = None
    if text.strip():
        try:
            data = resp.json()
        except ValueError:  # plain-text bodies are normal (Vast 429s)
            data = None
    return ApiResponse(status=resp.status_code, text=text, data=data, headers=resp.headers)


def request(
    provider: Provider,
    method: str,
    path: str,
    *,
    json: Any = None,
    params: Mapping[str, str] | None = None,
) -> ApiResponse:
    """Send one API call for ``provider``; see the module docstring for what is handled here.

    Raises Transient (timeout, connection error, 5xx), AuthFailed (401/403) and RateLimited (429
    after ``provider.max_retries_on_429`` retries, or a quota 429 at once). Transport errors and
    5xx are *not* retried: a create may already have happened, and the caller owns that decision.
    """
    url = provider.base_url + path
    headers = {"Authorization": f"Bearer {provider.api_key}", "Accept": "application/json"}
    attempt = 0
    operation = operation_name(method, path)
    while True:
        provider.limiter.wait()
        started = time.monotonic()
        try:
            raw = provider.session.request(
                method, url, json=json, params=params, headers=headers, timeout=provider.timeout
            )
        except requests.Timeout as exc:
            _record(provider.name, operation, "timeout", started)
            raise Transient(f"{provider.name} {method} {path}: timed out after {provider.timeout}s") from exc
        except requests.ConnectionError as exc:
            _record(provider.name, operation, "connection_error", started)
            detail = redact(type(exc).__name__ + ": " + str(exc), provider.api_key)
            raise Transient(f"{provider.name} {method} {path}: connection failed: {detail}") from exc
        except requests.RequestException as exc:
            _record(provider.name, operation, "request_error", started)
            detail = redact(type(exc).__name__ + ": " + str(exc), provider.api_key)
            raise Transient(f"{provider.name} {method} {path}: request failed: {detail}") from exc

        resp = _parse(raw)
        _record(provider.name, operation, _outcome(resp.status), started)
        log.debug("%s %s %s -> %s", provider.name, method, path, resp.status)
        if resp.status == 429:
            if resp.error_code in QUOTA_ERROR_CODES:
                raise RateLimited(
                    describe(provider, method, path, resp, "quota exceeded"),
                    retry_after=_quota_reset_in(resp.headers),
                    status=429,
                )
            # Vast's 429 bodies are usually plain text without Retry-After: then the limiter's
            # own exponential backoff decides the wait.
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            wait = provider.limiter.penalize(retry_after)
            if attempt >= provider.max_retries_on_429:
                raise RateLimited(
                    describe(provider, method, path, resp, f"rate limited after {attempt + 1} tries"),
                    retry_after=wait,
                    status=429,
                )
            attempt += 1
            log.info("%s %s %s: 429, retry %s in %.1fs", provider.name, method, path, attempt, wait)
            continue
        if resp.status >= 500:
            raise Transient(describe(provider, method, path, resp, "server error"), status=resp.status)
        if resp.status in (401, 403):
            raise AuthFailed(
                describe(provider, method, path, resp, "authentication failed"), status=resp.status
            )
        if resp.ok:
            provider.limiter.relax()
        return resp


def to_time(value: Any) -> datetime | None:
    """A provider timestamp (epoch seconds, or ISO 8601) as aware UTC; None when absent or odd."""
    if isinstance(value, bool) or value in (None, ""):
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(float(value), tz=UTC)
        moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def path_segment(value: Any) -> str:
    """An id as one URL path segment (ids come from the database; never let one add a path)."""
    return quote(str(value).strip(), safe="")


def to_text(value: Any) -> str:
    """A provider's string field, stripped; anything else (null, a number) is ""."""
    return value.strip() if isinstance(value, str) else ""


def to_int(value: Any) -> int:
    """A provider's whole-number field; null, a bool or garbage is 0."""
    try:
        return int(value) if value is not None and not isinstance(value, bool) else 0
    except (TypeError, ValueError):
        return 0
