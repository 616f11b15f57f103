"""The one domain error type: a refusal the user should read, with a stable code and an HTTP status.

Services raise a :class:`DomainError` subclass (offer gone, price changed, capacity, budget, hard
maximum, already ended, not found, insufficient balance, idempotency key reused...). It is turned
into an answer in exactly two places: the DRF exception handler (``common.api.exception_handler``:
``{"detail": message, "code": code}`` with ``status``) and, for pages, ``common.pages.refusals``
(a message, or an HTMX fragment with ``status``). Views do not catch it to convert it.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A refusal with a stable machine-readable ``code`` (API.md error column) and an HTTP ``status``.

    ``message`` is for people. ``data`` is context for callers and logs (never in the answer);
    ``extra`` is added to the API's error body next to ``detail`` and ``code``.
    Subclasses set ``code`` and ``status`` as class attributes; a status is never passed in data.
    """

    code: str = "invalid"
    status: int = 400

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None, **data: Any):
        super().__init__(message)
        self.message = message
        self.extra = dict(extra or {})
        self.data = data

    def body(self) -> dict[str, Any]:
        """The API's error body (API.md): ``{"detail": ..., "code": ..., **extra}``."""
        return {**self.extra, "detail": self.message, "code": self.code}


class Invalid(DomainError):
    code, status = "invalid", 400


class Forbidden(DomainError):
    code, status = "forbidden", 403


class Gone(DomainError):
    code, status = "gone", 410
