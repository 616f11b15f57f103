"""Logging helpers wired into settings.LOGGING: request ids, secret redaction, JSON lines.

Not named ``logging.py``: shopper/agent.py runs as a script from this folder and would import it
instead of the standard library.

* ``RequestIdFilter`` puts the current request id (set by ``shopper.middleware.RequestIdMiddleware``)
  on every record as ``record.request_id`` ("-" outside a request).
* ``RedactFilter`` masks secrets in the message, args, exception and stack text of every record
  (DESIGN.md: provider keys are never logged).
* ``JsonFormatter`` writes one JSON object per line (``LOG_JSON=True``).
* ``AdminEmailHandler`` is Django's error email (500s to ADMINS) with the same redaction.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from datetime import UTC, datetime

from django.utils import log as django_log

REDACTED = "[redacted]"
NO_REQUEST = "-"

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "shopper_request_id", default=None
)


def get_request_id() -> str | None:
    return request_id_var.get()


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get() or NO_REQUEST
        return True


# Order matters: whole PEM blocks first, then schemes, then bare token shapes.
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.DOTALL
        ),
        REDACTED,
    ),
    # Authorization schemes: "Token <key>", "Bearer <key>" (keep the scheme word). Credentials are
    # long; the length floor keeps prose such as "Token expired" readable.
    (re.compile(r"\b(Token|Bearer|bearer)(\s+)[A-Za-z0-9._~+/=-]{12,}"), r"\1\2" + REDACTED),
    # Our API tokens: gs_<token_urlsafe(32)>.
    (re.compile(r"\bgs_[A-Za-z0-9_-]{8,}"), REDACTED),
    # Fernet tokens (ciphertexts, e.g. encrypted private keys) and Fernet keys (44 chars, urlsafe b64).
    (re.compile(r"\bgAAAAA[A-Za-z0-9_-]{20,}={0,2}"), REDACTED),
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}=(?![A-Za-z0-9_=-])"), REDACTED),
]
_SECRET_SETTINGS = (
    "VASTAI_API_KEY",
    "TENSORDOCK_API_TOKEN",
    "RUNPOD_API_KEY",
    "LAMBDA_API_KEY",
    "SECRET_KEY",
    "METRICS_TOKEN",
    "EMAIL_HOST_PASSWORD",
)
MIN_SECRET_CHARS = 6  # shorter configured values would mask ordinary words


def configured_secrets() -> list[str]:
    """The secret values from settings (longest first), or [] before settings are ready."""
    try:
        from django.conf import settings

        if not settings.configured:
            return []
        values = [str(getattr(settings, name) or "") for name in _SECRET_SETTINGS]
        values += [str(k) for k in settings.SHOPPER_FERNET_KEYS or []]
    except Exception:
        return []
    return sorted({v for v in values if len(v) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with every known secret form replaced by "[redacted]"."""
    if not text:
        return text
    for secret in configured_secrets() if secrets is None else secrets:
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactFilter(logging.Filter):
    """Masks secrets in the rendered message (then drops args), exception and stack text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            secrets = configured_secrets()
            message = record.getMessage()
            cleaned = redact(message, secrets)
            if cleaned != message or record.args:
                record.msg, record.args = cleaned, None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text, secrets)
            if record.stack_info:
                record.stack_info = redact(record.stack_info, secrets)
        except Exception:  # a log call must never fail because of redaction
            record.msg, record.args = REDACTED, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id and request_id != NO_REQUEST:
            entry["request_id"] = request_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class AdminEmailHandler(django_log.AdminEmailHandler):
    """Django's error email with every known secret form masked. Its report quotes the
    exception's message, which it renders from ``exc_info`` itself, out of RedactFilter's reach,
    so the finished text is redacted instead."""

    def send_mail(self, subject, message, *args, **kwargs):
        secrets = configured_secrets()
        if kwargs.get("html_message"):
            kwargs["html_message"] = redact(kwargs["html_message"], secrets)
        super().send_mail(redact(subject, secrets), redact(message, secrets), *args, **kwargs)
