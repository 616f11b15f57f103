"""``/api/v1/sessions``: rent, list, inspect, shut down (API.md)."""

from __future__ import annotations

import contextlib

import django_filters as filters
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from common.api import documented_error
from common.errors import Gone, Invalid
from sessions import idempotency, idle, keys, services
from sessions.lifecycle import rental_extend
from sessions.models import EventKind, Rental, Status
from sessions.serializers import (
    EventSerializer,
    ExtendSerializer,
    IdleStopSerializer,
    SessionCreatedSerializer,
    SessionCreateSerializer,
    SessionSerializer,
)

ERRORS = {
    400: documented_error("Bad input, naming the parameter or field"),
    403: documented_error("`budget_exceeded` or `hard_max_exceeded`"),
    404: documented_error("No such session (or not yours)"),
    409: documented_error(
        "`offer_unavailable`, `price_changed`, `capacity_reached`, `already_ended`, "
        "`insufficient_balance` (the provider account cannot pay for the reservation)"
    ),
    410: documented_error("`gone`: the key was deleted at teardown"),
    415: documented_error("The body is not JSON, a form or multipart"),
}
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description=(
        "Optional, at most 255 printable ASCII characters (a UUID per rental is a good choice). "
        "A repeat with the same key returns the first request's rental (200, same body, including "
        "`ssh_private_key` while the rental is live), never a second rental. Keys are per user and "
        "never expire; a request that was refused stores nothing, so its repeat tries again. The same "
        "key with a different body is refused: 422 `idempotency_key_reused`."
    ),
)


class SessionFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=Status.choices)
    consumer = filters.CharFilter(field_name="consumer__username")

    class Meta:
        model = Rental
        fields = []


def _valid_key(key: str) -> bool:
    return 1 <= len(key) <= idempotency.MAX_KEY_LENGTH and all(" " <= c <= "~" for c in key)


@extend_schema_view(
    list=extend_schema(
        summary="My sessions (staff: everyone's)",
        responses={
            200: SessionSerializer(many=True),
            400: documented_error("Bad `status` filter"),
            404: documented_error("`page` past the last page"),
        },
    ),
    retrieve=extend_schema(summary="One session", responses={200: SessionSerializer, 404: ERRORS[404]}),
)
class SessionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = SessionSerializer
    filterset_class = SessionFilter
    # Any id reaches get_object, so a malformed one is the API's JSON 404, not the site's HTML one.
    lookup_value_regex = r"[^/]+"

    def get_queryset(self):
        # The owner filter comes first: another user's session is a 404, and ?consumer= can only
        # narrow what the caller may already see.
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return Rental.objects.none()
        return Rental.objects.for_user(self.request.user).select_related("consumer")

    def get_object(self):
        try:
            return super().get_object()
        except (DjangoValidationError, ValueError):
            raise exceptions.NotFound("No such session.") from None

    def filter_queryset(self, queryset):
        # ?status= and ?consumer= narrow the list; get_object() also calls this, and a session
        # asked for by id is found whatever the query string says.
        if self.action != "list":
            return queryset
        filterset = SessionFilter(self.request.query_params, queryset=queryset)
        if not filterset.is_valid():
            raise exceptions.ValidationError(filterset.errors)
        return filterset.qs

    @extend_schema(
        summary="Rent an offer",
        request=SessionCreateSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            201: SessionCreatedSerializer,
            200: OpenApiResponse(SessionCreatedSerializer, description="A repeat of an `Idempotency-Key`"),
            **{k: v for k, v in ERRORS.items() if k != 410},
            422: documented_error("`idempotency_key_reused`: the key was used for a different request"),
        },
    )
    def create(self, request):
        key = request.headers.get("Idempotency-Key")
        if key is not None and not _valid_key(key):
            raise Invalid("Idempotency-Key must be 1 to 255 printable ASCII characters.")
        data = SessionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        kwargs = {
            "offer_id": v["offer_id"],
            "reservation_hours": v["reservation_hours"],
            "ssh_public_key": v.get("ssh_public_key") or None,
            "image": v.get("image", ""),
            "disk_gb": v.get("disk_gb"),
            "preset": v.get("preset", ""),
            "ports": v.get("ports"),
            "onstart": v.get("onstart", ""),
            "expected_price": v.get("expected_price_per_hour"),
            "generate_key": v.get("generate_key", False),
            "max_price_per_hour": v.get("max_price_per_hour"),
            "failover": v.get("failover", True),
            "failover_any_gpu": v.get("failover_any_gpu", False),
        }
        if "idle_stop_minutes" in v:  # absent: the team default (sessions/idle.py)
            kwargs["idle_stop_minutes"] = v["idle_stop_minutes"]
        if key is None:
            created = services.rental_create(user=request.user, **kwargs)
            rental, private_key, new = created.rental, created.ssh_private_key, True
        else:
            rental, private_key, new = idempotency.rent_once(
                user=request.user,
                request_key=key,
                request_fingerprint=idempotency.fingerprint(kwargs),
                **kwargs,
            )
        if not new and rental.is_live and rental.ssh_private_key_encrypted:
            # The same body as the first answer, to the same user, who may download this key from
            # /ssh-key anyway while the rental is live; recorded on the timeline like a download.
            with transaction.atomic():
                services.rental_event(
                    rental, EventKind.KEY_DOWNLOAD, "Private key returned again (Idempotency-Key repeat)",
                    actor=request.user,
                )  # fmt: skip
            private_key = keys.secret_decrypt(rental.ssh_private_key_encrypted)
        body = SessionSerializer(rental).data
        if private_key:
            body["ssh_private_key"] = private_key
        return Response(body, status=status.HTTP_201_CREATED if new else status.HTTP_200_OK)

    @extend_schema(
        summary="The session's timeline",
        responses={200: EventSerializer(many=True), 404: ERRORS[404]},
        filters=False,
    )
    @action(detail=True, methods=["get"], pagination_class=None)
    def events(self, request, pk=None):
        rental = self.get_object()
        events = rental.events.select_related("actor").order_by("at", "id")
        return Response(EventSerializer(events, many=True).data)

    @extend_schema(
        summary="Download the generated private key (owner only, while live)",
        responses={(200, "text/plain"): str, 404: ERRORS[404], 410: ERRORS[410]},
    )
    @action(detail=True, methods=["get"], url_path="ssh-key")
    def ssh_key(self, request, pk=None):
        rental = self.get_object()
        if rental.consumer_id != request.user.pk:
            raise exceptions.NotFound("No such session.")
        if not rental.is_live or not rental.ssh_private_key_encrypted:
            if rental.ssh_public_key and not rental.is_live:
                raise Gone("The key was deleted when the machine was torn down.")
            raise exceptions.NotFound("This session has no generated key (you installed your own).")
        with transaction.atomic():
            services.rental_event(
                rental, EventKind.KEY_DOWNLOAD, "Private key downloaded (API)", actor=request.user
            )
        pem = keys.secret_decrypt(rental.ssh_private_key_encrypted)
        response = HttpResponse(pem, content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{rental.key_filename}"'
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(
        summary="The work is finished: shut the machine down",
        request=None,
        responses={202: SessionSerializer, 404: ERRORS[404], 409: ERRORS[409]},
    )
    @action(detail=True, methods=["post"])
    def done(self, request, pk=None):
        rental = self.get_object()
        services.rental_stop(rental=rental, reason="Done: the work is finished", actor=request.user)
        rental.refresh_from_db()
        return Response(SessionSerializer(rental).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="Extend the reservation (staff: past the hard maximum, with a reason)",
        request=ExtendSerializer,
        responses={
            200: SessionSerializer,
            **{k: ERRORS[k] for k in (400, 403, 404, 415)},
        },
    )
    @action(detail=True, methods=["post"])
    def extend(self, request, pk=None):
        rental = self.get_object()
        data = ExtendSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rental = rental_extend(
            rental=rental,
            hours=data.validated_data["hours"],
            reason=data.validated_data.get("reason", ""),
            actor=request.user,
        )
        return Response(SessionSerializer(rental).data)

    @extend_schema(
        summary="Set or clear the idle stop",
        request=IdleStopSerializer,
        responses={200: SessionSerializer, **{k: ERRORS[k] for k in (400, 404, 409, 415)}},
    )
    def partial_update(self, request, pk=None):
        rental = self.get_object()
        data = IdleStopSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rental = idle.idle_set(
            rental=rental, minutes=data.validated_data["idle_stop_minutes"], actor=request.user
        )
        return Response(SessionSerializer(rental).data)

    @extend_schema(summary="Force shutdown", responses={202: SessionSerializer, 404: ERRORS[404]})
    def destroy(self, request, pk=None):
        rental = self.get_object()
        # Already ended: shutting down twice is not an error.
        with contextlib.suppress(services.AlreadyEnded):
            services.rental_stop(
                rental=rental, reason=f"Force shutdown by {request.user.get_username()}", actor=request.user
            )
        rental.refresh_from_db()
        return Response(SessionSerializer(rental).data, status=status.HTTP_202_ACCEPTED)
