from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from inventory.filters import OfferFilterSet
from inventory.menu import Selection, holder
from inventory.models import Offer
from inventory.services import offers_freshness

PAGE_SIZE = 25


@require_GET
@login_required
def offer_list(request: HttpRequest) -> HttpResponse:
    # Filtered, sorted and paged from the in-memory menu (inventory/menu.py), like the API.
    filterset = OfferFilterSet(request.GET, queryset=Offer.objects.none())
    offers: Sequence = []
    if filterset.is_valid():
        menu = holder.get(wait=True)
        positions = menu.select(filterset.form.cleaned_data, now=timezone.now(), allow_db=True)
        offers = Selection(menu, positions, as_dicts=False)
    page = Paginator(offers, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "filterset": filterset,
        "page": page,
        "query": query.urlencode(),
        "freshness": offers_freshness(),
    }
    template = "inventory/offer_list.html"
    if request.htmx and not request.htmx.boosted and not request.htmx.history_restore_request:
        template += "#offer-results"
    return render(request, template, context)
