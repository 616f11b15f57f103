"""``GET /api/v1/inventory`` and ``GET /api/v1/inventory/{id}``."""

from __future__ import annotations

import hashlib

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, viewsets
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from inventory.filters import SORTS, OfferFilterSet, PageSizeForm
from inventory.models import Offer
from inventory.serializers import OfferSerializer, offer_rows, offer_tuples
from inventory.services import menu_version
from shopper.api import Pagination, documented_error
from shopper.auth import local_cache

# Bounds staleness from changes that do not bump the menu version (an offer suppressed after
# failed provisions); renting re-checks the offer with the provider anyway.
MENU_CACHE_SECONDS = 5


VERSION_KEY = "inventory:menu-version"
# How long a web process may serve pages under a version it read: a refresh made by the worker
# shows up here at most this much later.
VERSION_CACHE_SECONDS = 1


def page_cache_key(version: str, full_path: str) -> str:
    # Hashed: the query string is the client's and may be any length.
    return f"inventory:{version}:{hashlib.sha256(full_path.encode()).hexdigest()}"


def _bad_params(errors) -> exceptions.ValidationError:
    return exceptions.ValidationError({k: [str(m) for m in v] for k, v in errors.items()})


class InventoryViewSet(viewsets.ReadOnlyModelViewSet):
    """The offer menu. Filters and sort are the same as on the offers page."""

    serializer_class = OfferSerializer
    filterset_class = OfferFilterSet
    filter_backends = []  # filtering is explicit below so bad values are a 400 naming the parameter
    pagination_class = Pagination
    lookup_value_regex = r"[^/]+"

    def get_queryset(self):
        return Offer.objects.all()

    @extend_schema(
        parameters=[
            OpenApiParameter("gpu", str, description="Canonical GPU name or part of it, e.g. 'A100 80GB'"),
            OpenApiParameter("min_gpus", int),
            OpenApiParameter("min_vram_gb", int, description="Per GPU"),
            OpenApiParameter("max_price", float, description="$/h for the whole offer"),
            OpenApiParameter("provider", str, enum=["vastai", "tensordock"]),
            OpenApiParameter("location", str),
            OpenApiParameter("min_reliability", float, description="0 to 1"),
            OpenApiParameter("sort", str, enum=list(SORTS)),
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int, description="1 to 500, default 50"),
        ],
        responses={
            200: OfferSerializer(many=True),
            400: documented_error("A bad filter or paging value, naming the parameter"),
            404: documented_error("`page` past the last page"),
        },
    )
    def list(self, request, *args, **kwargs):
        # The menu changes when a refresh lands (about once a minute): cache each rendered page
        # under the menu version, so repeated queries cost one small read instead of a scan.
        version = menu_version()
        local_cache.set(VERSION_KEY, version, VERSION_CACHE_SECONDS)
        key = page_cache_key(version, request.get_full_path())
        body = local_cache.get(key)
        if body is None:
            body = JSONRenderer().render(self._page(request))
            local_cache.set(key, body, MENU_CACHE_SECONDS)
        return HttpResponse(body, content_type="application/json")

    def _page(self, request) -> dict:
        paging = PageSizeForm(request.query_params)
        if not paging.is_valid():
            raise _bad_params(paging.errors)
        filterset = OfferFilterSet(request.query_params, queryset=Offer.objects.visible())
        if not filterset.is_valid():
            raise _bad_params(filterset.errors)
        page = self.paginator.paginate_queryset(offer_tuples(filterset.qs), request, view=self)
        return self.paginator.get_paginated_response(offer_rows(page)).data

    @extend_schema(responses={200: OfferSerializer, 404: documented_error("No offer with that id")})
    def retrieve(self, request, *args, **kwargs):
        pk = str(kwargs.get("pk", ""))
        # ASCII digits only: "²".isdigit() is True and int("²") raised (a 500); at most 18 digits
        # so the number fits the database's integer.
        if not (pk.isascii() and pk.isdigit() and len(pk) <= 18):
            raise exceptions.NotFound("No offer with that id.")
        rows = offer_rows(offer_tuples(Offer.objects.filter(pk=int(pk))))
        if not rows:
            raise exceptions.NotFound("No offer with that id.")
        return Response(rows[0])
