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

The generated requests are widened with the inputs that once made 500s (issue 12): dates across
the whole of Python's range with UTC offsets (9999-12-31 overflowed), Unicode digits where ids and
numbers go ("²" passes ``str.isdigit``), and, for every operation that takes a JSON body, bodies
nested far deeper than any request (RecursionError).

Runs are repeatable (``derandomize``): a failure in CI fails the same way locally. ``make fuzz``
(nightly-style) runs the generated cases un-derandomized with more examples
(SCHEMA_FUZZ_RANDOM=1, SCHEMA_FUZZ_EXAMPLES): each run tries new inputs, and a failure prints the
blob to reproduce it.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import date, timedelta
from datetime import timezone as dt_timezone

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
# make fuzz: new random inputs on every run instead of the same derandomized ones.
RANDOM = os.environ.get("SCHEMA_FUZZ_RANDOM") == "1"
HEARTBEAT_PATH = "/api/v1/agent/heartbeat"
BENCHMARK_PATH = "/api/v1/agent/benchmark"
AGENT_PATHS = (HEARTBEAT_PATH, BENCHMARK_PATH)  # authenticated with the agent token
AGENT_TOKEN = "fuzz-agent-token-0123456789"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq7vQ7N4fK8m0s6p7D0J8u1g9xk8aZq6JQnq1m6tq1a me@laptop"

# Fixed ids, so the schema examples can name the rows the ``world`` fixture writes ("unknown" is
# written by nobody: a well-formed id that is a 404).
OFFER_IDS = {"live": 990001, "gone": 990002, "disabled_provider": 990003}
RENTAL_IDS = {
    name: uuid.UUID(int=n)
    for n, name in enumerate(["active", "pending", "destroyed", "stopping", "someone_elses", "unknown"], 1)
}


# Dates at the edges of what Python's datetime holds (issue 12: 500s on the costs API).
EDGE_DATES = {
    "from": ["0001-01-01", "0001-01-01T00:00:00+05:00"],
    "to": ["9999-12-31", "9999-12-31T23:59:59-05:00"],
}
# Any date of the proleptic calendar, bare or as a date-time with a UTC offset up to ±23:59.
ANY_DATE = st.one_of(
    st.dates().map(date.isoformat),
    st.builds(
        lambda moment, minutes: moment.replace(tzinfo=dt_timezone(timedelta(minutes=minutes))).isoformat(),
        st.datetimes(),
        st.integers(-1439, 1439),
    ),
    st.sampled_from([value for values in EDGE_DATES.values() for value in values]),
)
# Digits that are not ASCII: "²".isdigit() is True, int("²") raises.
UNICODE_DIGITS = st.text(
    alphabet=st.characters(categories=["Nd", "No"], exclude_characters="0123456789"), min_size=1, max_size=4
)


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
                    parameter["examples"]["unicode_digit"] = {"value": "²"}  # passes str.isdigit
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
            "superscript_offer_id": {"offer_id": "²", "reservation_hours": "1"},
        },
    )
    for parameter in paths["/api/v1/costs"]["get"]["parameters"]:
        if parameter["name"] in EDGE_DATES:
            parameter.setdefault("examples", {}).update(
                {f"edge_{i}": {"value": value} for i, value in enumerate(EDGE_DATES[parameter["name"]])}
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
    known = st.one_of(st.sampled_from([str(pk) for pk in ids.values()]), UNICODE_DIGITS)
    return st.one_of(st.just(path_parameters), known.map(lambda pk: {**path_parameters, "id": pk}))


QUERY_NAMES = {
    path: [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
    for path, operations in document["paths"].items()
    for method, operation in operations.items()
    if method == "get"
}


@schema.hook
def flatmap_query(context, query):
    """Some generated queries carry dates anywhere in the calendar (``from``/``to``) or Unicode
    digits (every other parameter), on top of what the schema's types lead to."""
    names = QUERY_NAMES.get(context.operation.path, []) if context.operation.method.lower() == "get" else []
    if not names or not (query is None or isinstance(query, dict)):
        return st.just(query)
    tricky = st.fixed_dictionaries(
        {}, optional={name: ANY_DATE if name in EDGE_DATES else UNICODE_DIGITS for name in names}
    )
    return st.one_of(st.just(query), tricky.map(lambda extra: {**(query or {}), **extra}))


@schema.hook
def flatmap_body(context, body):
    """Some generated rent requests name an offer on the menu (live, gone, at a disabled provider)
    or give Unicode digits as the offer id or the hours."""
    if context.operation.path == "/api/v1/sessions/{id}/extend" and isinstance(body, dict):
        return st.one_of(st.just(body), UNICODE_DIGITS.map(lambda text: {**body, "hours": text}))
    if context.operation.path != "/api/v1/sessions" or not isinstance(body, dict):
        return st.just(body)
    known = st.one_of(st.sampled_from([str(pk) for pk in OFFER_IDS.values()]), UNICODE_DIGITS)
    hours = UNICODE_DIGITS.map(lambda text: {**body, "reservation_hours": text})
    return st.one_of(st.just(body), known.map(lambda pk: {**body, "offer_id": pk}), hours)


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
    settings.SHOPPER_TASK_QUEUE = lambda func, *args: None
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
    derandomize=not RANDOM,
    print_blob=RANDOM,  # a random failure prints @reproduce_failure(...) to replay it
    database=None,  # nothing to replay from one run to the next: derandomized, or new each night
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_api_answers_as_documented(case, world):
    agent = case.operation.path in AGENT_PATHS
    authorization = f"Bearer {AGENT_TOKEN}" if agent else f"Token {world}"
    case.call_and_validate(headers={"Authorization": authorization}, checks=CHECKS)


JSON_OPERATIONS = [
    (path, method.upper())
    for path, operations in document["paths"].items()
    for method, operation in operations.items()
    if "application/json" in operation.get("requestBody", {}).get("content", {})
]


@pytest.mark.parametrize("depth", [33, 900, 5_000, 100_000])
@pytest.mark.parametrize(("path", "method"), JSON_OPERATIONS)
def test_every_json_operation_refuses_absurd_nesting(world, client, path, method, depth):
    """Any operation that takes JSON, today's and tomorrow's: a body nested ``depth`` levels is a
    documented 400, never a RecursionError 500. (Sent raw: the harness's own json.dumps would
    hit the recursion limit first, so this is not left to Schemathesis' generation.)"""
    agent = path in AGENT_PATHS
    response = client.generic(
        method,
        path.replace("{id}", str(RENTAL_IDS["active"])),
        "[" * depth + "]" * depth,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {AGENT_TOKEN}" if agent else f"Token {world}",
    )
    assert response.status_code == 400, (response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/json"
    assert "400" in document["paths"][path][method.lower()]["responses"]
    assert set(response.json()) >= {"detail", "code"}


def test_the_nesting_test_covers_every_json_operation():
    assert set(JSON_OPERATIONS) >= {
        ("/api/v1/sessions", "POST"),
        ("/api/v1/sessions/{id}/extend", "POST"),
        (HEARTBEAT_PATH, "POST"),
        (BENCHMARK_PATH, "POST"),
    }


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
