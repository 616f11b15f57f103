"""The offers page and its HTMX partial (the results), from the in-memory menu."""

from __future__ import annotations

import secrets
import time

from django.contrib.auth.decorators import login_required
from django.contrib.messages import get_messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, QueryDict
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET

from common.cache import local_cache
from common.htmx import is_fragment
from common.tokens import token_hash
from inventory.compare import gpu_models
from inventory.filters import OfferFilterSet, filter_form
from inventory.menu import Menu, Selection, holder
from inventory.models import Offer
from inventory.services import offers_freshness

PAGE_SIZE = 25


SESSION_CACHE_PREFIX = "offers-session:"
# The ASGI fast path (inventory/fastpath.py) answers the HTMX partial for a session this view
# confirmed this long ago; a logout shows there at most this much later (everywhere else at once).
SESSION_CACHE_SECONDS = 5
PARTIAL = "inventory/offer_list.html#offer-results"
PAGE = "inventory/offer_list.html"
# The filters and the results: the only part of the full page that depends on the query.
QUERY_PART = "inventory/offer_list.html#offer-query"

SHELL_CACHE_PREFIX = "offers-shell:"
SHELL_REFRESH_PREFIX = "offers-shell-refresh:"
# The rest of the full page (base.html: nav, banners, the logout form; the provider freshness
# line) as Django rendered it for a session, kept in this process for the ASGI fast path. Once
# it is SHELL_SECONDS old, one request of the session goes to Django, which renders a new one
# (and confirms the session again); the others meanwhile are still answered from it, for at most
# SESSION_CACHE_SECONDS after it was rendered: so the freshness line ("as of 12 seconds ago") and
# the budget banner are normally at most 2 s older than Django's own render, never more than 5 s,
# and 8 clients of one session send one request to Django per 2 s, not all 8 at once.
SHELL_SECONDS = 2
# Stand-ins rendered into the shell, replaced per answer: letters and digits only, so escaping
# leaves them as they are, and random per process, so no offer or user text can contain them.
QUERY_MARK = "query" + secrets.token_hex(16)
CSRF_MARK = "csrf" + secrets.token_hex(16)


def session_cache_key(session_key: str) -> str:
    return SESSION_CACHE_PREFIX + token_hash(session_key)


def shell_cache_key(session_key: str) -> str:
    return SHELL_CACHE_PREFIX + token_hash(session_key)


def cached_shell(session_key: str) -> tuple[str, str] | None:
    """The shell kept for ``session_key`` if the fast path may answer with it; None when there
    is none, or when it is due for a new render and this request is the one to ask Django."""
    found = local_cache.get(shell_cache_key(session_key))
    if found is None:
        return None
    head, tail, rendered_at = found
    if 0 <= time.time() - rendered_at < SHELL_SECONDS:
        return head, tail
    refresh_key = SHELL_REFRESH_PREFIX + token_hash(session_key)
    if local_cache.add(refresh_key, True, SHELL_SECONDS):  # the first request since it was due
        return None
    return head, tail


def keep_shell(session_key: str, shell: tuple[str, str]) -> None:
    local_cache.set(shell_cache_key(session_key), (*shell, time.time()), SESSION_CACHE_SECONDS)
    local_cache.delete(SHELL_REFRESH_PREFIX + token_hash(session_key))


def render_shell(request: HttpRequest) -> tuple[str, str]:
    """The full page around the query part, split where it goes, with ``CSRF_MARK`` where the CSRF
    token goes. The real templates render it (base.html and its context processors), so any
    change to them shows here; the view's context wins over the processors' ``csrf_token``."""
    context = {"freshness": offers_freshness(), "query_part": mark_safe(QUERY_MARK), "csrf_token": CSRF_MARK}
    head, mark, tail = render_to_string(PAGE, context, request).partition(QUERY_MARK)
    assert mark, "offer_list.html must render {{ query_part }}"
    return head, tail


def join_page(request: HttpRequest, shell: tuple[str, str], query_part: str) -> str:
    """The full page: ``shell`` around ``query_part``, with a CSRF token masked for this answer
    if the shell shows one. ``get_token`` is what the csrf context processor calls: the same
    token format, and the CSRF middleware refreshes the cookie as for any page that shows it."""
    head, tail = shell
    if CSRF_MARK in head or CSRF_MARK in tail:
        token = get_token(request)
        head, tail = head.replace(CSRF_MARK, token), tail.replace(CSRF_MARK, token)
    return head + query_part + tail


# The sortable columns of the offers table: column -> (ascending sort, descending sort, the sort
# of a first click). A click on the sorted column turns it around.
SORTABLE_COLUMNS = {
    "gpus": ("gpu_count", "-gpu_count", "-gpu_count"),
    "vram": ("vram_gb", "-vram_gb", "-vram_gb"),
    "price": ("price", "-price", "price"),
    "price_per_gpu": ("price_per_gpu", "-price_per_gpu", "price_per_gpu"),
    # $ per TFLOP-hour: cheapest (best value) first.
    "value": ("value", "-value", "value"),
    "reliability": ("reliability", "-reliability", "-reliability"),
    # best_bet (price ÷ confidence) has one direction: the link always sorts by it.
    "confidence": ("best_bet", "best_bet", "best_bet"),
    "network": ("inet_down", "-inet_down", "-inet_down"),
    "disk": ("disk", "-disk", "-disk"),
    "duration": ("max_duration", "-max_duration", "-max_duration"),
}


def sort_headers(data: QueryDict, current: str) -> dict[str, dict]:
    """Per sortable column: the query its header links to and its ``aria-sort``."""
    rest = QueryDict(mutable=True)
    for key, values in data.lists():
        if key not in ("page", "sort"):
            rest.setlist(key, values)
    base = rest.urlencode()  # once: the sort goes last, as the form would put it
    base += "&" if base else ""
    headers = {}
    for column, (ascending, descending, first) in SORTABLE_COLUMNS.items():
        state = "ascending" if current == ascending else "descending" if current == descending else ""
        sort = ascending if current == descending else descending if current == ascending else first
        headers[column] = {"query": f"{base}sort={sort}", "aria_sort": state}
    return headers


def results_context(menu: Menu, data: QueryDict, filterset, *, allow_db: bool = True) -> dict | None:
    """What the results partial shows for ``data``; ``filterset`` has the validated form. None
    when that needs the database and ``allow_db`` is False (see ``Menu.select``).

    A filter with a bad value is not applied (the results say so, with the field's label, and
    the page marks the field); the others are, rather than showing nothing at all.
    """
    filterset.is_valid()
    cleaned = filterset.form.cleaned_data  # the fields that validated
    positions = menu.select(cleaned, now=timezone.now(), allow_db=allow_db)
    if positions is None:
        return None
    page = Paginator(Selection(menu, positions, as_dicts=False), PAGE_SIZE).get_page(data.get("page"))
    query = data.copy()
    query.pop("page", None)
    form = filterset.form
    not_applied = [
        {"name": name, "label": form.fields[name].label if name in form.fields else name, "errors": errors}
        for name, errors in filterset.errors.items()
    ]
    return {
        "filterset": filterset,
        "page": page,
        "query": query.urlencode(),
        "not_applied": not_applied,
        "sorting": sort_headers(data, cleaned.get("sort") or "price"),
        "gpu_models": menu.gpu_models,
    }


class ValidatedFilters:
    """What the results partial reads of a filter set, without building one (the ASGI fast path):
    the same form (``filters.filter_form``), so the same cleaned data and errors."""

    def __init__(self, data: QueryDict) -> None:
        self.form = filter_form(data)

    def is_valid(self) -> bool:
        return self.form.is_valid()

    @property
    def errors(self):
        return self.form.errors


wants_partial = is_fragment  # the name the fast path (inventory/fastpath.py) imports


@require_GET
@login_required
def offer_list(request: HttpRequest) -> HttpResponse:
    # Filtered, sorted and paged from the in-memory menu (inventory/menu.py), like the API.
    filterset = OfferFilterSet(request.GET, queryset=Offer.objects.none())
    context = results_context(holder.get(wait=True), request.GET, filterset)
    assert context is not None  # allow_db: the menu always answers
    if request.session.session_key:
        key = session_cache_key(request.session.session_key)
        local_cache.set(key, request.user.pk, SESSION_CACHE_SECONDS)
    if wants_partial(request):
        return render(request, PARTIAL, context)
    # Messages shown once: a page that shows some is never kept as a shell (the fast path also
    # leaves any request with a messages cookie to this view).
    pending_messages = len(get_messages(request)) > 0
    shell = render_shell(request)
    if request.session.session_key and not pending_messages:
        keep_shell(request.session.session_key, shell)
    return HttpResponse(join_page(request, shell, render_to_string(QUERY_PART, context, request)))


@require_GET
@login_required
def gpu_compare(request: HttpRequest) -> HttpResponse:
    """Compare GPUs: one row per model on the menu, best value first (``inventory/compare.py``)."""
    rows = gpu_models(holder.get(wait=True), timezone.now())
    return render(request, "inventory/gpu_compare.html", {"models": rows})
