"""Schemathesis against the OpenAPI schema the app serves: every operation, in-process (WSGI).

For each operation Hypothesis generates valid and invalid requests from the schema and sends them
with a normal user's API token (the agent heartbeat: a live rental's agent token). Every answer must
be no server error and match what the schema documents: status code, content type, headers, body.

So that requests reach real code paths rather than stopping at a 404, the user owns rentals in
several states and the menu has offers, all with fixed ids; the fuzzed copy of the schema carries
those ids (and a few real request bodies) as examples, which Schemathesis sends first, and the
hooks below put them into a share of the generated requests too. No provider is called over the
network: offers are re-checked by the in-memory ``fuzzcloud`` provider, and background work
(provisioning, teardown) is dropped, not run.

Runs are repeatable (``derandomize``): a failure in CI fails the same way locally.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import timedelta

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.renderers import JSONRenderer
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from inventory import providers as registry
from inventory.models import Offer
from inventory.providers.base import OfferData, Provider
from sessions import services
from sessions.models import Rental, RentalEvent, Status
from shopper.models import ApiToken
from tests.factories import OfferFactory, RentalFactory


@schemathesis.check
def answers_in_json(ctx, response, case):
    """API.md: JSON everywhere, also where the schema checks look away (undeclared methods, bad
    paths): the one exception is the private key download."""
    if response.request.method == "HEAD" or (
        case.operation.path.endswith("/ssh-key") and response.status_code == 200
    ):
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if content_type.split(";")[0].strip() != "application/json":
        raise AssertionError(
            f"{response.status_code} answered in {content_type or 'no content type'}, not JSON"
        )
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    unsupported_method,
    ignored_auth,
    answers_in_json,
]
# Generated requests per operation, on top of the schema examples and Schemathesis' coverage cases;
# raise it for a deeper local run (SCHEMA_FUZZ_EXAMPLES=500).
MAX_EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "25"))
HEARTBEAT_PATH = "/api/v1/agent/heartbeat"
AGENT_TOKEN = "fuzz-agent-token-0123456789"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq7vQ7N4fK8m0s6p7D0J8u1g9xk8aZq6JQnq1m6tq1a me@laptop"

# Fixed ids, so the schema examples can name the rows the ``world`` fixture writes ("unknown" is
# written by nobody: a well-formed id that is a 404).
OFFER_IDS = {"live": 990001, "gone": 990002, "disabled_provider": 990003}
RENTAL_IDS = {
    name: uuid.UUID(int=n)
    for n, name in enumerate(["active", "pending", "destroyed", "stopping", "someone_elses", "unknown"], 1)
}


def openapi_schema() -> dict:
    """The document ``GET /api/v1/schema/`` serves (test_served_schema_is_the_one_fuzzed checks it)."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(JSONRenderer().render(document))


def json_body_examples(operation: dict, examples: dict[str, dict]) -> None:
    content = operation["requestBody"]["content"]["application/json"]
    content["examples"] = {name: {"value": body} for name, body in examples.items()}


def with_examples(document: dict) -> dict:
    """The schema plus examples naming the fuzz rows: a copy for this test, not the served one."""
    paths = document["paths"]
    for path, operations in paths.items():
        ids = {name: str(pk) for name, pk in (OFFER_IDS if "/inventory/" in path else RENTAL_IDS).items()}
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "id":
                    parameter["examples"] = {name: {"value": pk} for name, pk in ids.items()}
    live = str(OFFER_IDS["live"])
    json_body_examples(
        paths["/api/v1/sessions"]["post"],
        {
            "generated_key": {"offer_id": live, "reservation_hours": "2", "generate_key": True},
            "own_key": {"offer_id": live, "reservation_hours": "1.5", "ssh_public_key": PUBLIC_KEY},
            "price_moved": {"offer_id": live, "reservation_hours": "1", "expected_price_per_hour": "0.0100"},
            "past_hard_max": {"offer_id": live, "reservation_hours": "48"},
            "offer_gone": {"offer_id": str(OFFER_IDS["gone"]), "reservation_hours": "1"},
            "provider_disabled": {"offer_id": str(OFFER_IDS["disabled_provider"]), "reservation_hours": "1"},
        },
    )
    json_body_examples(
        paths["/api/v1/sessions/{id}/extend"]["post"],
        {"within_hard_max": {"hours": "1"}, "past_hard_max": {"hours": "100", "reason": "long job"}},
    )
    json_body_examples(
        paths[HEARTBEAT_PATH]["post"],
        {
            "busy": {
                "rental_id": str(RENTAL_IDS["active"]),
                "gpus": [{"util": 97, "mem_used_mb": 20000, "mem_total_mb": 24564}],
                "uptime_s": 3600,
                "agent_time": "2025-03-01T12:00:00Z",
            }
        },
    )
    return document


CONFIG = schemathesis.Config.from_dict(
    {
        # Valid and invalid requests; auth is sent by the test, never generated.
        "generation": {"mode": "all", "with-security-parameters": False},
        "phases": {"stateful": {"enabled": False}},
    }
)
document = with_examples(openapi_schema())
schema = schemathesis.openapi.from_dict(document, config=CONFIG)
schema.app = WSGIHandler()


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Some generated requests name a row that exists instead of a random id."""
    if not isinstance(path_parameters, dict) or "id" not in path_parameters:
        return st.just(path_parameters)
    ids = OFFER_IDS if context.operation.path.startswith("/api/v1/inventory/") else RENTAL_IDS
    known = st.sampled_from([str(pk) for pk in ids.values()])
    return st.one_of(st.just(path_parameters), known.map(lambda pk: {**path_parameters, "id": pk}))


@schema.hook
def flatmap_body(context, body):
    """Some generated rent requests name an offer on the menu (live, gone, at a disabled provider)."""
    if context.operation.path != "/api/v1/sessions" or not isinstance(body, dict):
        return st.just(body)
    known = st.sampled_from([str(pk) for pk in OFFER_IDS.values()])
    return st.one_of(st.just(body), known.map(lambda pk: {**body, "offer_id": pk}))


class FuzzCloud(Provider):
    """Answers the rent-time re-check of an offer with the menu's price; nothing else is reached
    (the ``world`` fixture drops the provisioning task instead of running it)."""

    name = "fuzzcloud"
    display_name = "Fuzz Cloud"

    def get_offer(self, offer_id):
        offer = Offer.objects.filter(provider=self.name, provider_offer_id=offer_id).first()
        if offer is None:
            return None
        return OfferData(
            self.name, offer_id, offer.gpu_type, offer.gpu_count, offer.vram_gb, offer.price_per_hour
        )


def make_offer(pk: int, *, provider: str = "fuzzcloud", available: bool = True) -> Offer:
    return OfferFactory(
        pk=pk,
        provider=provider,
        provider_offer_id=f"fz-{pk}",
        gpu_count=2,
        price_per_hour="1.2000",
        available=available,
    )


def make_rental(name: str, consumer, offer: Offer, status: str, **fields) -> Rental:
    """A rental of ``offer`` with its first event, started an hour ago."""
    rental = RentalFactory(
        id=RENTAL_IDS[name],
        consumer=consumer,
        offer=offer,
        status=status,
        created_at=timezone.now() - timedelta(hours=1),
        **fields,
    )
    RentalEvent.objects.create(
        rental=rental, from_status="", to_status=Status.PENDING, reason="Rented", actor=consumer
    )
    return rental


@pytest.fixture
def world(db, settings, monkeypatch, user, other_user):
    """The fake provider, a menu, and rentals in several states; returns ``user``'s API token."""
    registry.register_provider("fuzzcloud", f"{__name__}.FuzzCloud")
    settings.FUZZCLOUD_API_KEY = "k"
    monkeypatch.setattr(services, "enqueue", lambda func, *args: None)
    # As Django's test client does: closing "old" connections around each request would end the
    # test's transaction (WSGIHandler sends these signals).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)

    live = make_offer(OFFER_IDS["live"])
    make_offer(OFFER_IDS["gone"], available=False)
    make_offer(OFFER_IDS["disabled_provider"], provider="vastai")  # no key in the tests: disabled
    now = timezone.now()
    ran = {"active_since": now - timedelta(minutes=50)}
    make_rental(
        "active",
        user,
        live,
        Status.ACTIVE,
        **ran,
        reachable=True,
        with_key=True,
        ssh_public_key=PUBLIC_KEY,
        agent_token=AGENT_TOKEN,
        provider_instance_id="i-1",
    )
    make_rental("pending", user, live, Status.PENDING)
    make_rental("stopping", user, live, Status.STOPPING, **ran, provider_instance_id="i-2")
    make_rental("destroyed", user, live, Status.DESTROYED, **ran, ended_at=now, ssh_public_key=PUBLIC_KEY)
    make_rental("someone_elses", other_user, live, Status.ACTIVE, **ran)
    _, raw = ApiToken.issue(user=user, name="fuzz")
    yield raw
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)
    registry.unregister_provider("fuzzcloud")


@schema.parametrize()
@hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,  # derandomized: nothing to replay from one run to the next
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_api_answers_as_documented(case, world):
    agent = case.operation.path == HEARTBEAT_PATH
    authorization = f"Bearer {AGENT_TOKEN}" if agent else f"Token {world}"
    case.call_and_validate(headers={"Authorization": authorization}, checks=CHECKS)


TOKEN_OPERATIONS = [
    (path, method.upper())
    for path, operations in document["paths"].items()
    for method, operation in operations.items()
    if operation.get("security")
]


@pytest.mark.parametrize("authorization", [None, "Token not-a-token", "Bearer also-not-a-token"])
@pytest.mark.parametrize(("path", "method"), TOKEN_OPERATIONS)
def test_without_a_valid_token_the_answer_is_the_documented_401(world, path, method, authorization):
    operation = schema[path][method]
    path_parameters = {"id": str(RENTAL_IDS["active"])} if "{id}" in path else {}
    headers = {"Authorization": authorization} if authorization else {}
    case = operation.Case(path_parameters=path_parameters, headers=headers)
    response = case.call()
    assert response.status_code == 401
    case.validate_response(response, checks=CHECKS)


def test_a_throttled_call_gets_the_documented_429(world, settings):
    settings.API_THROTTLE_USER = "1/min"
    case = schema["/api/v1/sessions"]["GET"].Case()
    headers = {"Authorization": f"Token {world}"}
    assert case.call(headers=headers).status_code == 200
    response = case.call(headers=headers)
    assert response.status_code == 429
    assert int(response.headers["retry-after"][0]) > 0
    case.validate_response(response, checks=CHECKS)


def test_served_schema_is_the_one_fuzzed(api_client):
    response = api_client.get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    assert json.loads(response.content) == openapi_schema()
