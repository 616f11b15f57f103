"""How a view tells an HTMX fragment request (answer a partial) from a full page load."""

from __future__ import annotations

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    """A request that passed django-htmx's HtmxMiddleware (for type hints)."""

    htmx: HtmxDetails


def is_fragment(request: HttpRequest) -> bool:
    """True when htmx asks for a partial: not a boosted link (that wants the whole page) and not
    a history restore (the browser lost its cached page and needs all of it)."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request
