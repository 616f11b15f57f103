"""The offers page and its HTMX partial (the results), from the in-memory menu."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from inventory.filters import OfferFilterSet, filter_form
from inventory.menu import Menu, Selection, holder
from inventory.models import Offer
from inventory.services import offers_freshness
from shopper.auth import local_cache

PAGE_SIZE = 25


SESSION_CACHE_PREFIX = "offers-session:"
# The ASGI fast path (inventory/fastpath.py) answers the HTMX partial for a session this view
# confirmed this long ago; a logout shows there at most this much later (everywhere else at once).
SESSION_CACHE_SECONDS = 5
PARTIAL = "inventory/offer_list.html#offer-results"


def session_cache_key(session_key: str) -> str:
    return SESSION_CACHE_PREFIX + hashlib.sha256(session_key.encode()).hexdigest()


def results_context(menu: Menu, data: QueryDict, filterset, *, allow_db: bool = True) -> dict | None:
    """What the results partial shows for ``data``; ``filterset`` has the validated form. None
    when that needs the database and ``allow_db`` is False (see ``Menu.select``)."""
    offers: Sequence = []
    if filterset.is_valid():
        positions = menu.select(filterset.form.cleaned_data, now=timezone.now(), allow_db=allow_db)
        if positions is None:
            return None
        offers = Selection(menu, positions, as_dicts=False)
    page = Paginator(offers, PAGE_SIZE).get_page(data.get("page"))
    query = data.copy()
    query.pop("page", None)
    return {"filterset": filterset, "page": page, "query": query.urlencode()}


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


def wants_partial(request: HttpRequest) -> bool:
    return bool(request.htmx and not request.htmx.boosted and not request.htmx.history_restore_request)


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
    context["freshness"] = offers_freshness()
    return render(request, "inventory/offer_list.html", context)
