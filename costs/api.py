"""``GET /api/v1/costs``: the spend summary of API.md.

Who sees what: everyone sees their own spend. Staff see the whole team by default (with a
``by_consumer`` breakdown) and may narrow to one person with ``?consumer=<username>``; anyone
else passing another person's username gets 403 ``forbidden`` (their own username is fine).
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import exceptions
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from common.api import documented_error
from common.errors import Forbidden
from costs import services
from costs.serializers import CostsQuerySerializer, CostsSerializer


def _series(records, period: str) -> list[dict]:
    return [
        {"period": row["key"], **{k: row[k] for k in ("amount", "provider_cost", "hours")}}
        for row in services.group_records(records, period)
    ]


@extend_schema(
    summary="Spend summary (mine; staff: the team's or one person's)",
    parameters=[
        OpenApiParameter("period", str, enum=["day", "month"], description="Series grouping (default month)"),
        OpenApiParameter(
            "from",
            str,
            description="ISO date or date-time (default: start of this UTC month)",
            examples=[
                OpenApiExample("date", value="2025-03-01"),
                OpenApiExample("date-time", value="2025-03-01T12:00:00Z"),
            ],
        ),
        OpenApiParameter(
            "to",
            str,
            description="ISO date (inclusive) or date-time (exclusive); default now",
            examples=[
                OpenApiExample("date", value="2025-03-31"),
                OpenApiExample("date-time", value="2025-03-02T00:00:00Z"),
            ],
        ),
        OpenApiParameter("consumer", str, description="Staff only: a username"),
    ],
    responses={
        200: CostsSerializer,
        400: documented_error("Bad parameter, naming it"),
        403: documented_error("`forbidden`: consumer= is staff only"),
    },
)
@api_view(["GET"])
def costs(request: Request) -> Response:
    query = CostsQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    params = query.validated_data
    now = timezone.now()
    start = params["from"][0] if "from" in params else services.month_start(now)
    if "to" in params:
        end, is_date = params["to"]
        end = end + timedelta(days=1) if is_date else end
    else:
        end = now
    if start >= end:
        raise exceptions.ValidationError({"to": ["to must be after from."]})

    user, target = request.user, request.user
    username = params.get("consumer")
    if username and username != user.get_username():
        if not user.is_staff:
            raise Forbidden("consumer= is for staff only; you see your own spend.")
        target = services.consumer_lookup(username)
        if target is None:
            raise exceptions.ValidationError({"consumer": [f"No user named {username!r}."]})
    team_view = user.is_staff and not username
    scope = None if team_view else target

    records = services.spend_records(start=start, end=end, user=scope, now=now)
    total, provider_cost = services.spend_total(records)
    body = {
        "from": start,
        "to": end,
        "consumer": None if scope is None else scope.get_username(),
        "period": params["period"],
        "currency": "USD",
        "total": total,
        "provider_cost": provider_cost,
        "hours": services.cents(sum((r.seconds for r in records), 0) / services.SECONDS_PER_HOUR),
        "series": _series(records, params["period"]),
        "by_gpu_type": services.group_records(records, "gpu_type"),
        "by_provider": services.group_records(records, "provider"),
        "budget": services.budget_status(user=target, now=now),
    }
    if team_view:
        body["by_consumer"] = services.group_records(records, "consumer")
    return Response(CostsSerializer(body).data)
