"""POST /api/v1/agent/heartbeat and GET /agent.py (API.md, DESIGN.md safety rule 7)."""

from __future__ import annotations

import ast
import json
import sys
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from sessions import onstart
from sessions.agent_api import AGENT_FILE
from sessions.models import EventKind, Rental, RentalEvent, Status
from tests.factories import RentalFactory

URL = "/api/v1/agent/heartbeat"
GOOD = {
    "rental_id": "x",
    "gpus": [{"util": 37, "mem_used_mb": 1024, "mem_total_mb": 24564}],
    "agent_time": "2025-03-01T12:00:00+00:00",
    "uptime_s": 60,
}


@pytest.fixture
def make_rental(db, user):
    """make_rental(status=ACTIVE, token="tok", **fields): a started rental whose agent holds ``token``."""

    def make(status=Status.ACTIVE, token="tok", **kw) -> Rental:
        return RentalFactory(consumer=user, status=status, agent_token=token, running=True, **kw)

    return make


def beat(client, body=GOOD, token="tok", raw=None, **headers):
    if token is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", **headers)


def assert_nothing_written(rental: Rental, events_before: int = 0) -> None:
    rental.refresh_from_db()
    assert rental.last_heartbeat_at is None and rental.last_heartbeat_data == {}
    assert RentalEvent.objects.filter(rental=rental).count() == events_before


def test_a_valid_token_gets_continue_and_the_heartbeat_is_stored(client, make_rental):
    rental = make_rental()
    before = timezone.now()
    r = beat(client)
    assert r.status_code == 200, r.content
    assert r.json() == {
        "action": "continue",
        "hard_max_at": rental.hard_max_at.isoformat(),
        "reservation_ends_at": rental.reservation_ends_at.isoformat(),
        "benchmark": True,  # active and never measured: the agent benchmarks the GPU once
    }
    rental.refresh_from_db()
    assert rental.last_heartbeat_at >= before
    assert rental.last_heartbeat_data == GOOD
    assert rental.status == Status.ACTIVE
    # The first heartbeat shows on the timeline once; later ones only update the row.
    assert beat(client).status_code == 200
    assert list(RentalEvent.objects.filter(rental=rental).values_list("kind", flat=True)) == [
        EventKind.HEARTBEAT
    ]


def test_unknown_fields_are_not_stored(client, make_rental):
    rental = make_rental()
    assert beat(client, {**GOOD, "junk": "x" * 10_000}).status_code == 200
    rental.refresh_from_db()
    assert "junk" not in rental.last_heartbeat_data


@pytest.mark.parametrize(
    "auth",
    [None, "Bearer nope", "Bearer ", "Token tok", "tok", "Bearer tok2"],
    ids=["missing", "unknown", "blank", "wrong-scheme", "no-scheme", "other"],
)
def test_bad_tokens_get_401_and_nothing_is_written(client, make_rental, auth):
    rental = make_rental()
    headers = {"HTTP_AUTHORIZATION": auth} if auth is not None else {}
    r = client.post(URL, data=json.dumps(GOOD), content_type="application/json", **headers)
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_agent_token" and r.json()["detail"]
    assert_nothing_written(rental)


@pytest.mark.parametrize("status", [Status.DESTROYED, Status.FAILED])
def test_the_token_of_an_ended_rental_gets_401(client, make_rental, status):
    rental = make_rental(status=status)
    assert beat(client).status_code == 401
    assert_nothing_written(rental)


def test_a_rental_without_token_cannot_be_matched_by_a_blank_one(client, make_rental):
    rental = make_rental(token="")
    r = client.post(URL, data="{}", content_type="application/json", HTTP_AUTHORIZATION="Bearer ")
    assert r.status_code == 401
    assert_nothing_written(rental)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "valid JSON"),
        ("", "JSON object"),
        ("[1, 2]", "JSON object"),
        ('"text"', "JSON object"),
        ('{"gpus": {"util": 1}}', "gpus must be a list"),
        ('{"gpus": [1]}', "gpus[0] must be an object"),
        ('{"gpus": [{"util": -1}]}', "gpus[0].util must be a non-negative integer"),
        ('{"gpus": [{"util": 1, "mem_used_mb": -5}]}', "mem_used_mb"),
        ('{"gpus": [{"mem_total_mb": 1.5}]}', "mem_total_mb"),
        ('{"gpus": [{"util": "90"}]}', "util"),
        ('{"gpus": [{"util": true}]}', "util"),
        ('{"gpus": [{"util": 1e400}]}', "util"),
        (json.dumps({"gpus": [{"util": 1}] * 100}), "at most 16"),
        ('{"uptime_s": -1}', "uptime_s"),
        ('{"uptime_s": NaN}', "uptime_s"),
        ('{"agent_time": 5}', "agent_time"),
        ("[" * 100_000, "valid JSON"),
    ],
    ids=lambda v: v[:30] if isinstance(v, str) else v,
)
def test_malformed_bodies_get_400_and_nothing_is_written(client, make_rental, raw, message):
    rental = make_rental()
    r = beat(client, raw=raw)
    assert r.status_code == 400, r.content
    assert message in r.json()["detail"] and r.json()["code"] == "invalid"
    assert_nothing_written(rental)


def test_a_stopping_rental_is_told_to_shut_down(client, make_rental, enqueued):
    rental = make_rental(status=Status.STOPPING)
    r = beat(client)
    assert r.status_code == 200 and r.json()["action"] == "shutdown"
    rental.refresh_from_db()
    assert rental.status == Status.STOPPING and rental.last_heartbeat_at is not None
    assert enqueued == []  # already stopping: no second teardown


@pytest.mark.parametrize("status", [Status.BOOTING, Status.VERIFYING, Status.ACTIVE])
def test_past_the_hard_max_the_agent_is_told_to_shut_down_and_the_rental_stops(
    client, make_rental, enqueued, django_capture_on_commit_callbacks, status
):
    rental = make_rental(status=status)
    past_hard_max = rental.hard_max_at + timedelta(seconds=1)
    with (
        time_machine.travel(past_hard_max, tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        r = beat(client)
    assert r.status_code == 200 and r.json()["action"] == "shutdown"
    rental.refresh_from_db()
    assert rental.status == Status.STOPPING
    assert rental.status_detail == "Hard maximum reached (reported by the node agent)"
    event = RentalEvent.objects.get(rental=rental, to_status=Status.STOPPING)
    assert (event.from_status, event.reason) == (status, "Hard maximum reached (reported by the node agent)")
    assert enqueued == [("sessions.tasks.teardown", rental.pk)]


def test_just_before_the_hard_max_it_continues(client, make_rental, enqueued):
    rental = make_rental()
    with time_machine.travel(rental.hard_max_at - timedelta(seconds=1), tick=False):
        assert beat(client).json()["action"] == "continue"
    assert enqueued == []


def test_the_endpoint_ignores_user_sessions_and_api_tokens(api_client, make_rental):
    rental = make_rental()
    r = api_client.post(URL, data=GOOD, format="json")  # an API token is not an agent token
    assert r.status_code == 401
    assert_nothing_written(rental)


def test_the_endpoint_is_in_the_openapi_schema_without_auth():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    op = schema["paths"]["/api/v1/agent/heartbeat"]["post"]
    assert not op.get("security")  # no session/API-token auth: the agent token is described instead
    assert list(op["requestBody"]["content"]) == ["application/json"]
    assert "Bearer" in op["description"] and "agent token" in op["description"]
    assert set(op["responses"]) >= {"200", "400", "401"}


# -- GET /agent.py ---------------------------------------------------------------------------------
def test_agent_py_is_served_without_auth(client, db):
    r = client.get("/agent.py")
    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/x-python")
    assert r.content == AGENT_FILE.read_bytes()
    assert r.content.startswith(b"#!/usr/bin/env python3")
    assert client.post("/agent.py").status_code == 405


def test_the_agent_imports_only_the_standard_library():
    tree = ast.parse(AGENT_FILE.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0  # no relative import
            modules.add(node.module.split(".")[0])
    assert modules, "no imports found?"
    assert modules - {"__future__"} <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)
    assert not {"django", "rest_framework", "shopper", "sessions", "inventory", "requests"} & modules


# -- agent_env / agent_onstart -----------------------------------------------------------------------
def test_agent_env_carries_the_agent_settings(make_rental, settings):
    rental = make_rental()
    settings.SHOPPER_AGENT_HEARTBEAT_SECONDS = 15
    settings.SHOPPER_AGENT_UNREACHABLE_SECONDS = 600
    env = onstart.agent_env(rental, "raw-token")
    assert env == {
        "SHOPPER_URL": settings.SHOPPER_PUBLIC_URL,
        "SHOPPER_RENTAL_ID": str(rental.pk),
        "SHOPPER_AGENT_TOKEN": "raw-token",
        "SHOPPER_HARD_DEADLINE": rental.hard_max_at.isoformat(),
        "SHOPPER_HEARTBEAT_SECONDS": "15",
        "SHOPPER_UNREACHABLE_SECONDS": "600",
    }


def test_the_onstart_script_holds_no_secret_and_needs_no_curl():
    script = onstart.agent_onstart()
    assert "$SHOPPER_URL" in script or 'os.environ["SHOPPER_URL"]' in script
    assert "agent.py" in script and "nohup" in script and "setsid" in script
    assert "SHOPPER_AGENT_TOKEN" not in script
    assert "curl" not in script and "wget" not in script


# ------------------------------------------------------------------------------ rate limit
def test_heartbeats_are_limited_per_agent_token_with_429_and_retry_after(client, make_rental, settings):
    settings.SHOPPER_AGENT_HEARTBEATS_PER_MINUTE = 5
    settings.SHOPPER_AGENT_HEARTBEAT_SECONDS = 30  # the agents' own rate: 2 a minute
    rental = make_rental()
    other = make_rental(token="tok-2")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(5):
            assert beat(client).status_code == 200
        stored_at = Rental.objects.get(pk=rental.pk).last_heartbeat_at
        clock.shift(timedelta(seconds=20))
        refused = beat(client, body={**GOOD, "uptime_s": 999})
        assert refused.status_code == 429
        assert refused.json() == {
            "detail": "Too many heartbeats: at most 5 a minute per agent token.",
            "code": "throttled",
        }
        assert int(refused["Retry-After"]) == 40
        rental.refresh_from_db()
        assert rental.last_heartbeat_at == stored_at  # the refused one changed nothing
        assert rental.last_heartbeat_data["uptime_s"] == 60
        # Another rental's agent has its own allowance; the window passes.
        assert beat(client, token="tok-2").status_code == 200
        assert Rental.objects.get(pk=other.pk).last_heartbeat_at is not None
        clock.shift(timedelta(seconds=41))
        assert beat(client).status_code == 200


def test_a_bad_token_is_a_401_not_counted(client, make_rental, settings):
    settings.SHOPPER_AGENT_HEARTBEATS_PER_MINUTE = 1
    settings.SHOPPER_AGENT_HEARTBEAT_SECONDS = 600
    make_rental()
    for _ in range(3):
        assert beat(client, token="not-it").status_code == 401
    assert beat(client).status_code == 200


def test_the_limit_never_throttles_the_rate_the_agents_are_told(client, make_rental, settings):
    settings.SHOPPER_AGENT_HEARTBEATS_PER_MINUTE = 1
    settings.SHOPPER_AGENT_HEARTBEAT_SECONDS = 10  # 6 a minute: the floor is 12
    make_rental()
    with time_machine.travel(timezone.now(), tick=False):
        assert all(beat(client).status_code == 200 for _ in range(12))
        assert beat(client).status_code == 429


def test_the_limit_is_off_at_zero(client, make_rental, settings):
    settings.SHOPPER_AGENT_HEARTBEATS_PER_MINUTE = 0
    make_rental()
    assert all(beat(client).status_code == 200 for _ in range(30))
