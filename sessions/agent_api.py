"""The node agent's side of the API: ``POST /api/v1/agent/heartbeat``, ``POST /api/v1/agent/benchmark``
and ``GET /agent.py``.

The agent authenticates with its per-rental token (``Authorization: Bearer <token>``), stored as
``Rental.agent_token_hash`` and revoked when the rental is destroyed. It holds no provider key.
"""

from __future__ import annotations

import math
import time
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api import documented_error, error_response
from common.tokens import token_hash
from inventory.measured import benchmark_record
from inventory.models import BenchmarkDtype, MachineBenchmark
from sessions import idle, services
from sessions.models import LIVE_STATUSES, Rental, Status
from shopper.parsers import JSONParser, json_loads
from shopper.throttling import counter_hit

AGENT_FILE = Path(__file__).resolve().parent.parent / "shopper" / "agent.py"
MAX_GPUS = 16
GPU_FIELDS = ("util", "mem_used_mb", "mem_total_mb")
MAX_INT = 2**31 - 1


# Bounds of a believable per-GPU benchmark (the fastest GPU of the spec table does 2,250 dense
# BF16 TFLOPS and 8 TB/s): beyond them the report is refused, not stored.
MAX_TFLOPS = 10_000
MAX_GBPS = 100_000


class BadHeartbeat(ValueError):
    pass


def _clean_heartbeat(body: object) -> dict:
    """The stored heartbeat: known fields only, checked; raises BadHeartbeat with a clear message."""
    if not isinstance(body, dict):
        raise BadHeartbeat("The body must be a JSON object.")
    gpus = body.get("gpus", [])
    if not isinstance(gpus, list):
        raise BadHeartbeat("gpus must be a list.")
    if len(gpus) > MAX_GPUS:
        raise BadHeartbeat(f"gpus may hold at most {MAX_GPUS} entries.")
    clean_gpus = []
    for i, gpu in enumerate(gpus):
        if not isinstance(gpu, dict):
            raise BadHeartbeat(f"gpus[{i}] must be an object.")
        clean = {}
        for name in GPU_FIELDS:
            value = gpu.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
                raise BadHeartbeat(f"gpus[{i}].{name} must be a non-negative integer.")
            clean[name] = value
        clean_gpus.append(clean)
    data: dict = {"gpus": clean_gpus}
    uptime = body.get("uptime_s")
    if uptime is not None:
        if isinstance(uptime, bool) or not isinstance(uptime, int | float) or not 0 <= uptime < 10**10:
            raise BadHeartbeat("uptime_s must be a non-negative number.")
        data["uptime_s"] = int(uptime)
    for name in ("agent_time", "rental_id"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, str) or len(value) > 64:
                raise BadHeartbeat(f"{name} must be a short string.")
            data[name] = value
    return data


def _number(body: dict, name: str, low: float, high: float) -> Decimal:
    """``body[name]`` as a Decimal with one decimal place, low < value <= high; else BadHeartbeat."""
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise BadHeartbeat(f"{name} must be a number above {low:g} and at most {high:g}.")
    return Decimal(str(round(float(value), 1)))


def _clean_benchmark(body: object) -> dict:
    """The stored benchmark figures, checked; raises BadHeartbeat with a clear message."""
    if not isinstance(body, dict):
        raise BadHeartbeat("The body must be a JSON object.")
    if body.get("dtype") not in BenchmarkDtype.values:
        raise BadHeartbeat(f"dtype must be one of {', '.join(BenchmarkDtype.values)}.")
    figures = {
        "dtype": body["dtype"],
        "tflops": _number(body, "tflops", 0, MAX_TFLOPS),
        "gbps": _number(body, "gbps", 0, MAX_GBPS),
    }
    name = body.get("gpu_name", "")
    if not isinstance(name, str) or len(name) > 64:
        raise BadHeartbeat("gpu_name must be a short string.")
    figures["gpu_name"] = name
    return figures


def benchmark_wanted(rental: Rental) -> bool:
    """Ask the agent for a benchmark: the rental was handed off (active) and has not reported."""
    return (
        settings.SHOPPER_AGENT_BENCHMARK
        and rental.status == Status.ACTIVE
        and not MachineBenchmark.objects.filter(rental_id=rental.pk).exists()
    )


def heartbeat_limit() -> int:
    """Heartbeats allowed per agent token per minute: the setting, but at least twice what the
    agents we start send (SHOPPER_AGENT_HEARTBEAT_SECONDS), so a healthy agent is never refused."""
    limit = int(settings.SHOPPER_AGENT_HEARTBEATS_PER_MINUTE)
    if limit <= 0:
        return 0
    interval = max(1, int(settings.SHOPPER_AGENT_HEARTBEAT_SECONDS))
    return max(limit, 2 * math.ceil(60 / interval))


def _throttled(rental: Rental) -> Response | None:
    """A 429 with Retry-After once this rental's agent token has used its minute (counted in the
    database: every web process sees the same count)."""
    limit = heartbeat_limit()
    if not limit:
        return None
    count, window_ends = counter_hit(f"agent:{rental.agent_token_hash}", 60)
    if count <= limit:
        return None
    response = error_response(
        f"Too many heartbeats: at most {limit} a minute per agent token.", "throttled", 429
    )
    response["Retry-After"] = str(max(1, math.ceil(window_ends - time.time())))
    return response


def _bearer_token(request) -> str:
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


HEARTBEAT_REQUEST = inline_serializer(
    "AgentHeartbeatRequest",
    fields={
        "rental_id": serializers.CharField(required=False),
        "gpus": serializers.ListField(
            child=inline_serializer(
                "AgentGpu",
                fields={
                    "util": serializers.IntegerField(min_value=0),
                    "mem_used_mb": serializers.IntegerField(min_value=0),
                    "mem_total_mb": serializers.IntegerField(min_value=0),
                },
            ),
            max_length=MAX_GPUS,
            required=False,
        ),
        "agent_time": serializers.CharField(required=False),
        "uptime_s": serializers.IntegerField(min_value=0, required=False),
    },
)
HEARTBEAT_RESPONSE = inline_serializer(
    "AgentHeartbeatResponse",
    fields={
        "action": serializers.ChoiceField(choices=["continue", "shutdown"]),
        "hard_max_at": serializers.DateTimeField(),
        "reservation_ends_at": serializers.DateTimeField(),
        "benchmark": serializers.BooleanField(
            help_text="Run the GPU benchmark once and POST it to /api/v1/agent/benchmark"
        ),
    },
)


def _agent_rental(request) -> tuple[Rental | None, Response | None]:
    """The live rental whose agent token the request carries, or the 401 answer."""
    token = _bearer_token(request)
    rental = (
        Rental.objects.filter(agent_token_hash=token_hash(token), status__in=LIVE_STATUSES).first()
        if token
        else None
    )
    if rental is not None:
        return rental, None
    response = error_response(
        "A valid agent token is required (Authorization: Bearer <token>).", "invalid_agent_token", 401
    )
    response["WWW-Authenticate"] = 'Bearer realm="agent"'
    return None, response


class AgentHeartbeatView(APIView):
    """Authenticates itself with the agent token: no user session, no API token."""

    authentication_classes: list = []
    permission_classes: list = []
    parser_classes = [JSONParser]  # documents the body; post() reads request.body itself

    @extend_schema(
        summary="Node agent heartbeat",
        description=(
            "Called every 30 s by the node agent (`/agent.py`) running on the rented machine. "
            "Authenticate with `Authorization: Bearer <agent token>`: the per-rental token the "
            "machine received in `SHOPPER_AGENT_TOKEN`, valid while the rental is live and revoked "
            "at teardown. `action` is `shutdown` when the rental is stopping or past its hard max "
            "(the agent then powers the machine off), else `continue`. `benchmark` asks the agent "
            "to measure the GPU once (the rental is active and has not reported yet)."
        ),
        auth=[],
        request=HEARTBEAT_REQUEST,
        responses={
            200: HEARTBEAT_RESPONSE,
            400: documented_error("Malformed body; nothing is recorded"),
            401: documented_error("`invalid_agent_token`: missing, unknown or revoked"),
            429: documented_error(
                "`throttled`: too many heartbeats for this token (`Retry-After` says when to retry)"
            ),
        },
        tags=["agent"],
    )
    def post(self, request):
        rental, refused = _agent_rental(request)
        if refused is not None:
            return refused
        throttled = _throttled(rental)
        if throttled is not None:
            return throttled  # nothing is recorded
        try:
            body = json_loads(request.body or b"null")
        except ValueError:  # JSONDecodeError, UnicodeDecodeError, TooDeep (absurd nesting)
            return error_response("The body must be a JSON object (this is not valid JSON).", "invalid", 400)
        try:
            data = _clean_heartbeat(body)
        except BadHeartbeat as exc:
            return error_response(str(exc), "invalid", 400)
        action = services.rental_heartbeat(rental=rental, data=data)
        idle.heartbeat_record(rental, data)  # the idle stop's count (sessions/idle.py)
        return Response(
            {
                "action": action,
                "hard_max_at": rental.hard_max_at.isoformat(),
                "reservation_ends_at": rental.reservation_ends_at.isoformat(),
                "benchmark": action == "continue" and benchmark_wanted(rental),
            }
        )


BENCHMARK_REQUEST = inline_serializer(
    "AgentBenchmarkRequest",
    fields={
        "rental_id": serializers.CharField(required=False),
        "dtype": serializers.ChoiceField(choices=BenchmarkDtype.values),
        "tflops": serializers.FloatField(help_text=f"Dense matmul TFLOPS of one GPU, (0, {MAX_TFLOPS}]"),
        "gbps": serializers.FloatField(help_text=f"Memory bandwidth of one GPU in GB/s, (0, {MAX_GBPS}]"),
        "gpu_name": serializers.CharField(required=False, max_length=64),
        "gpu_count": serializers.IntegerField(required=False),
        "seconds": serializers.FloatField(required=False),
    },
)


class AgentBenchmarkView(APIView):
    """The node agent's one GPU benchmark of its rental (issue 18); agent token, like heartbeats."""

    authentication_classes: list = []
    permission_classes: list = []
    parser_classes = [JSONParser]

    @extend_schema(
        summary="Node agent GPU benchmark",
        description=(
            "Sent once per rental by the node agent after the handoff, when the heartbeat answer "
            "said `benchmark: true`: achieved dense TFLOPS (`dtype` bf16, or fp32 on GPUs "
            "without BF16) and memory bandwidth of one GPU. Stored for the provider machine and "
            "shown as `measured` on its offers."
        ),
        auth=[],
        request=BENCHMARK_REQUEST,
        responses={
            201: inline_serializer("AgentBenchmarkResponse", fields={"recorded": serializers.BooleanField()}),
            400: documented_error("Malformed body or implausible figures; nothing is recorded"),
            401: documented_error("`invalid_agent_token`: missing, unknown or revoked"),
            409: documented_error("`not_active` before the handoff; `already_reported`: one per rental"),
            429: documented_error("`throttled`: shares the heartbeats' budget per token"),
        },
        tags=["agent"],
    )
    def post(self, request):
        rental, refused = _agent_rental(request)
        if refused is not None:
            return refused
        throttled = _throttled(rental)
        if throttled is not None:
            return throttled
        try:
            figures = _clean_benchmark(json_loads(request.body or b"null"))
        except BadHeartbeat as exc:
            return error_response(str(exc), "invalid", 400)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError, TooDeep
            return error_response("The body must be a JSON object (this is not valid JSON).", "invalid", 400)
        if rental.status != Status.ACTIVE:
            return error_response("A benchmark is taken once the machine was handed off.", "not_active", 409)
        if benchmark_record(rental=rental, figures=figures) is None:
            return error_response("This rental already reported its benchmark.", "already_reported", 409)
        return Response({"recorded": True}, status=201)


@require_GET
def agent_script(request):
    """The node agent itself; no auth: it holds no secret (the token arrives in the environment)."""
    response = HttpResponse(AGENT_FILE.read_bytes(), content_type="text/x-python; charset=utf-8")
    response["Content-Disposition"] = 'inline; filename="agent.py"'
    return response
