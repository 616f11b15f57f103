"""The one place a :class:`common.errors.DomainError` becomes a page answer.

Page views that may be refused are wrapped in :func:`refusals`; they do not catch DomainError
themselves (a form that must re-render differently, e.g. the rent page on a changed price, may
still catch that one subclass, because it shows more than the message).

- An htmx fragment request gets the message as a small fragment with the error's HTTP status,
  inserted just before the element the request would have updated (``HX-Reswap: beforebegin``),
  so a form keeps what the user typed. htmx does not swap 4xx bodies by default: the
  ``X-Refusal`` header tells static/js/app.js to swap this one.
- Anything else (a plain form post, a boosted link) gets the message on the next page and a
  redirect (post/redirect/get) to ``back``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import format_html

from common.errors import DomainError
from common.htmx import is_fragment

REFUSAL_HEADER = "X-Refusal"


def refusal_response(request: HttpRequest, exc: DomainError, back: str) -> HttpResponse:
    """The answer to a refused page request (see the module docstring)."""
    if is_fragment(request):
        html = format_html('<div class="msg msg-error" role="alert">{}</div>', exc.message)
        response = HttpResponse(html, status=exc.status)
        response["HX-Reswap"] = "beforebegin"
        response[REFUSAL_HEADER] = exc.code
        return response
    messages.error(request, exc.message)
    return redirect(back)


def refusals(back: str | None = None) -> Callable:
    """Decorator for a page view: a DomainError it raises becomes :func:`refusal_response`.

    ``back`` is the URL name to return to, reversed with the view's URL keyword arguments
    (e.g. ``"sessions:detail"`` for ``rental_id``); without it, the page that was posted to.
    """

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            try:
                return view(request, *args, **kwargs)
            except DomainError as exc:
                url = reverse(back, kwargs=kwargs) if back else request.get_full_path()
                return refusal_response(request, exc, url)

        return wrapper

    return decorate
