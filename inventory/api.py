"""``GET /api/v1/inventory`` and ``GET /api/v1/inventory/{id}``."""

from __future__ import annotations

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, viewsets
from rest_framework.decorators import api_view
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from common.api import Pagination, documented_error
from inventory.compare import gpu_models
from inventory.filters import SORTS, OfferFilterSet, PageSizeForm, filter_form
from inventory.measured import measured_for
from inventory.menu import Menu, Selection, holder
from inventory.models import Offer
from inventory.providers import PROVIDER_CLASSES
from inventory.serializers import GpuListSerializer, OfferSerializer, offer_rows, offer_tuples


def _bad_params(errors) -> exceptions.ValidationError:
    return exceptions.ValidationError({k: [str(m) for m in v] for k, v in errors.items()})


def render_page(menu: Menu, request: Request, *, allow_db: bool) -> bytes | None:
    """The JSON body of one menu page for ``request``, from the in-memory ``menu``.

    Validation is the filter class's and the paging form's (a bad value raises the same
    ValidationError, a page past the end NotFound); paging and links are DRF's paginator's.
    None when answering needs the database and ``allow_db`` is False (see ``Menu.select``).
    """
    now, generation = timezone.now(), menu.generation
    key = request.build_absolute_uri()  # the paging links name the host and scheme
    body = menu.answer(key, now)
    if body is not None:
        return body
    paging = PageSizeForm(request.query_params)
    if not paging.is_valid():
        raise _bad_params(paging.errors)
    form = filter_form(request.query_params)
    if not form.is_valid():
        raise _bad_params(form.errors)
    positions = menu.select(form.cleaned_data, now=now, allow_db=allow_db)
    if positions is None:
        return None
    paginator = Pagination()
    page = paginator.paginate_queryset(Selection(menu, positions, as_dicts=True), request)
    body = JSONRenderer().render(paginator.get_paginated_response(page).data)
    menu.remember(key, body, now, generation)
    return body


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
            OpenApiParameter(
                "gpu",
                str,
                many=True,
                explode=True,
                description="Canonical GPU name or part of it, e.g. 'A100 80GB'; several (any of them) by "
                "repeating the parameter or with commas: gpu=A100&gpu=4090 or gpu=A100,4090",
            ),
            OpenApiParameter("min_gpus", int),
            OpenApiParameter("min_vram_gb", int, description="Per GPU"),
            OpenApiParameter("max_price", float, description="$/h for the whole offer"),
            OpenApiParameter("provider", str, enum=sorted(PROVIDER_CLASSES)),
            OpenApiParameter("location", str),
            OpenApiParameter("min_reliability", float, description="0 to 1, e.g. 0.95 (the page: percent)"),
            OpenApiParameter("min_reliability_pct", float, description="The same in percent, 0 to 100"),
            OpenApiParameter(
                "min_confidence",
                float,
                description="0 to 1: at least this chance a rental becomes active (field `confidence`)",
            ),
            OpenApiParameter(
                "min_cuda",
                str,
                description="The host's CUDA is at least this, e.g. 12.4 (as versions)",
            ),
            OpenApiParameter("min_driver", str, description="NVIDIA driver at least this, e.g. 550"),
            OpenApiParameter("min_inet_down_mbps", int, description="Measured download speed (Vast only)"),
            OpenApiParameter("min_inet_up_mbps", int, description="Measured upload speed (Vast only)"),
            OpenApiParameter("min_disk_gb", int, description="The largest disk a rental can have, at least"),
            OpenApiParameter("min_duration_hours", int, description="Rentals allowed this long (Vast only)"),
            OpenApiParameter("verified", str, enum=["true", "false"], description="Host verified"),
            OpenApiParameter("datacenter", str, enum=["true", "false"], description="Hosted in a datacenter"),
            OpenApiParameter(
                "sort",
                str,
                enum=list(SORTS),
                description="`best_bet`: price_per_hour ÷ confidence (at least 0.05), lowest first; "
                "`value`: cheapest $ per TFLOP-hour first (`-value`: dearest); "
                "offers whose GPU is not in the spec table come last either way; "
                "`inet_down`, `disk`, `max_duration` (and `-`): unknowns last either way",
            ),
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
        # Answered from this process's in-memory menu (inventory/menu.py), not a scan per query.
        body = render_page(holder.get(wait=True), request, allow_db=True)
        return HttpResponse(body, content_type="application/json")

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
        row = rows[0]
        row["measured"] = measured_for(row["provider"], row["provider_offer_id"], row["gpu_type"])
        return Response(row)


@extend_schema(
    summary="Compare GPUs: one row per GPU model on the menu, best value first",
    responses={200: GpuListSerializer},
)
@api_view(["GET"])
def gpu_list(request: Request) -> HttpResponse:
    """``GET /api/v1/gpus``: from this process's in-memory menu, like the inventory."""
    rows = gpu_models(holder.get(wait=True), timezone.now())
    return HttpResponse(JSONRenderer().render({"results": rows}), content_type="application/json")
