"""A JSON body nested absurdly deep is a 400 on every JSON endpoint, never a 500 (issue 12: 5,000
nested ``[`` raised RecursionError through DRF's JSONParser). shopper/parsers.py."""

from __future__ import annotations

import json

import pytest

from sessions.models import Rental, RentalEvent, Status
from shopper.parsers import MAX_DEPTH, TooDeep, depth_check, json_loads
from tests.factories import RentalFactory

pytestmark = pytest.mark.django_db

DEEP = "[" * 5000 + "]" * 5000  # valid JSON, too deep for Python's parser
UNCLOSED = "[" * 5000


def nested(depth: int) -> str:
    """A valid document of exactly ``depth`` levels: {"a": {"a": ... [] }}."""
    return '{"a": ' * (depth - 1) + "[]" + "}" * (depth - 1)


def test_depth_check_counts_levels_without_recursing():
    depth_check(json.loads(nested(MAX_DEPTH)))
    with pytest.raises(TooDeep):
        depth_check(json.loads(nested(MAX_DEPTH + 1)))
    with pytest.raises(TooDeep):
        json_loads(DEEP)
    assert json_loads('{"gpus": [{"util": 1}]}') == {"gpus": [{"util": 1}]}


@pytest.fixture
def rental(user):
    return RentalFactory(consumer=user, status=Status.ACTIVE, agent_token="tok", running=True)


def endpoints(rental) -> list[str]:
    """Every API endpoint that reads a JSON body (done and DELETE never read theirs)."""
    return ["/api/v1/sessions", f"/api/v1/sessions/{rental.pk}/extend"]


@pytest.mark.parametrize(
    "body", [DEEP, UNCLOSED, nested(MAX_DEPTH + 1), nested(900)], ids=["5000", "unclosed", "33", "900"]
)
def test_every_api_endpoint_answers_400_and_changes_nothing(api_client, rental, body):
    before = (Rental.objects.count(), RentalEvent.objects.count(), Rental.objects.get(pk=rental.pk).status)

    for url in endpoints(rental):
        response = api_client.generic("POST", url, body, content_type="application/json")
        assert response.status_code == 400, (url, response.status_code, response.content[:200])
        assert response.json()["code"] == "parse_error"

    after = (Rental.objects.count(), RentalEvent.objects.count(), Rental.objects.get(pk=rental.pk).status)
    assert after == before


def test_the_depth_error_says_what_is_wrong(api_client):
    response = api_client.generic("POST", "/api/v1/sessions", DEEP, content_type="application/json")

    assert response.json()["detail"] == f"The JSON body is nested too deeply (more than {MAX_DEPTH} levels)."


def test_a_normal_body_still_parses(api_client, rental):
    response = api_client.generic(
        "POST", f"/api/v1/sessions/{rental.pk}/extend", '{"hours": "x"}', content_type="application/json"
    )

    assert response.status_code == 400 and response.json()["errors"].keys() == {"hours"}


@pytest.mark.parametrize("body", [DEEP, nested(MAX_DEPTH + 1), '{"gpus": ' + nested(40) + "}"])
def test_the_agent_heartbeat_answers_400_and_records_nothing(client, rental, body):
    response = client.post(
        "/api/v1/agent/heartbeat", data=body, content_type="application/json", HTTP_AUTHORIZATION="Bearer tok"
    )

    assert response.status_code == 400, response.content[:200]
    assert response.json()["code"] == "invalid"
    rental.refresh_from_db()
    assert rental.last_heartbeat_at is None
