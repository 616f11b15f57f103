"""GET /metrics: access rules, the database collector's values, provider call metrics."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import responses
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from inventory.models import ProviderFeed
from inventory.providers import base
from inventory.providers.http import operation_name
from sessions.models import Alert, EventCause, EventKind, RentalEvent
from shopper.metrics import PROVIDER_REQUESTS
from tests.factories import RentalFactory

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-0123456789"
METRIC_NAMES = [
    "shopper_rentals",
    "shopper_rentals_stuck_stopping",
    "shopper_orphans_found_total",
    "shopper_ghosts_found_total",
    "shopper_destroy_retries_total",
    "shopper_offer_data_age_seconds",
    "shopper_deadline_lag_seconds",
    "shopper_spend_per_hour_usd",
    "shopper_provider_requests_total",
    "shopper_provider_request_seconds",
]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def scrape(client, settings):
    settings.METRICS_TOKEN = TOKEN

    def get() -> str:
        resp = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert resp.status_code == 200, resp.content
        assert resp["Content-Type"].startswith("text/plain")
        return resp.content.decode()

    return get


# ------------------------------------------------------------------------------- access
def test_token_required_when_set(client, settings):
    settings.METRICS_TOKEN = TOKEN
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing.json()["code"] == "not_authenticated"
    assert missing["WWW-Authenticate"].startswith("Bearer")
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "authentication_failed"
    assert TOKEN not in wrong.content.decode()
    # Loopback is no exemption once a token is configured.
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_loopback_only_without_token(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    remote = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert remote.status_code == 403
    assert remote.json() == {"detail": remote.json()["detail"], "code": "forbidden"}


def test_post_not_allowed(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.post("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 405


# ------------------------------------------------------------------------------- values
def test_every_metric_name_is_exposed(scrape):
    text = scrape()
    typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    for name in METRIC_NAMES:
        # Older prometheus_client versions print a counter's TYPE line without "_total".
        assert name in typed or name.removesuffix("_total") in typed, name


def test_empty_database_values(scrape):
    text = scrape()
    assert value(text, "shopper_rentals", status="active", provider="vastai") == 0.0
    assert value(text, "shopper_rentals_stuck_stopping") == 0.0
    assert value(text, "shopper_orphans_found_total") == 0.0
    assert value(text, "shopper_deadline_lag_seconds", stat="max") == 0.0
    assert value(text, "shopper_spend_per_hour_usd") == 0.0


def test_database_values(scrape, user):
    now = timezone.now()
    RentalFactory(consumer=user, status="active")
    RentalFactory(
        consumer=user, status="active", price_per_hour=Decimal("1.2500"), markup_percent=Decimal("10")
    )
    RentalFactory(consumer=user, status="booting", provider="tensordock")
    RentalFactory(consumer=user, status="stopping", stop_requested_at=now - timedelta(minutes=20))
    RentalFactory(consumer=user, status="stopping", stop_requested_at=now - timedelta(minutes=2))
    RentalFactory(consumer=user, status="destroyed", ended_at=now)
    failed_destroy = RentalFactory(consumer=user, status="failed")
    Alert.objects.create(kind="orphan", provider="vastai", message="orphan 1")
    Alert.objects.create(kind="orphan", provider="vastai", message="orphan 2")
    Alert.objects.create(kind="ghost", message="ghost")
    Alert.objects.create(kind="budget", message="not counted")
    # Events are counted by kind and data["cause"], never by their sentence (reworded here; the
    # old sentences on other kinds or without the cause count for nothing).
    RentalEvent.objects.create(
        rental=failed_destroy,
        kind=EventKind.ERROR,
        reason="Could not destroy it (try 1): transient: x",
        data={"cause": EventCause.DESTROY_FAILED, "attempt": 1},
    )
    RentalEvent.objects.create(rental=failed_destroy, kind=EventKind.ERROR, reason="Destroy attempt 2 failed")
    RentalEvent.objects.create(rental=failed_destroy, kind=EventKind.INFO, reason="Deadline enforced")
    for lag in range(1, 21):  # 1..20 s
        RentalEvent.objects.create(
            rental=failed_destroy,
            kind=EventKind.DEADLINE,
            reason="Stopped on time",
            data={"lag_seconds": lag},
        )
    RentalEvent.objects.create(  # outside the one-hour window
        rental=failed_destroy,
        kind=EventKind.DEADLINE,
        reason="Deadline enforced",
        data={"lag_seconds": 999},
        at=now - timedelta(hours=2),
    )
    ProviderFeed.objects.create(provider="vastai", last_success_at=now - timedelta(seconds=90))
    ProviderFeed.objects.create(provider="tensordock")  # never succeeded: no sample

    text = scrape()
    assert value(text, "shopper_rentals", status="active", provider="vastai") == 2.0
    assert value(text, "shopper_rentals", status="booting", provider="tensordock") == 1.0
    assert value(text, "shopper_rentals", status="stopping", provider="vastai") == 2.0
    assert ("shopper_rentals", (("provider", "vastai"), ("status", "destroyed"))) not in samples(text)
    assert value(text, "shopper_rentals_stuck_stopping") == 1.0
    assert value(text, "shopper_orphans_found_total") == 2.0
    assert value(text, "shopper_ghosts_found_total") == 1.0
    assert value(text, "shopper_destroy_retries_total") == 1.0
    assert 90 <= value(text, "shopper_offer_data_age_seconds", provider="vastai") < 120
    assert ("shopper_offer_data_age_seconds", (("provider", "tensordock"),)) not in samples(text)
    assert value(text, "shopper_deadline_lag_seconds", stat="max") == 20.0
    assert value(text, "shopper_deadline_lag_seconds", stat="p95") == 19.0
    # Billing: two active (0.5 + 1.25 * 1.1 = 1.875) and two stopping (0.5 each).
    assert value(text, "shopper_spend_per_hour_usd") == pytest.approx(2.875)


def test_scrape_uses_few_queries(scrape, user, django_assert_max_num_queries):
    RentalFactory(consumer=user, status="active")
    with django_assert_max_num_queries(10):
        scrape()


# ------------------------------------------------------------------------------- provider calls
@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api/v0/instances/12345/", "GET /api/v0/instances/{id}/"),
        ("PUT", "/api/v0/asks/987/", "PUT /api/v0/asks/{id}/"),
        ("PUT", "/api/v0/search/asks/", "PUT /api/v0/search/asks/"),
        ("GET", "/api/v1/instances/?owner=me", "GET /api/v1/instances/"),
        ("post", "/api/v0/instances/77/ssh/", "POST /api/v0/instances/{id}/ssh/"),
        ("DELETE", "/instances/abc-def", "DELETE /instances/{id}"),
        ("GET", "/locations", "GET /locations"),
    ],
)
def test_operation_name_has_no_ids(method, path, expected):
    assert operation_name(method, path) == expected


class _NoWait:
    def wait(self):
        pass

    def penalize(self, retry_after=None):
        return 0.0

    def relax(self):
        pass


def _counter(provider: str, operation: str, outcome: str) -> float:
    return PROVIDER_REQUESTS.labels(provider, operation, outcome)._value.get()


def test_provider_calls_are_counted(scrape):
    from inventory.providers.vastai import VastAI

    vast = VastAI(
        base_url="https://vast.test", api_key="k-secret-123456", timeout=5, session=requests.Session()
    )
    vast.limiter = _NoWait()
    operation = "GET /api/v0/instances/{id}/"
    ok_before = _counter("vastai", operation, "ok")
    err_before = _counter("vastai", operation, "server_error")
    with responses.RequestsMock() as rsps:
        rsps.get(
            "https://vast.test/api/v0/instances/4242/",
            json={"instances": {"id": 4242, "label": "shopper-x", "actual_status": "running"}},
        )
        rsps.get("https://vast.test/api/v0/instances/4343/", status=502, body="bad gateway")
        vast.get_instance("4242")
        with pytest.raises(base.Transient):
            vast.get_instance("4343")
    assert _counter("vastai", operation, "ok") == ok_before + 1
    assert _counter("vastai", operation, "server_error") == err_before + 1

    text = scrape()
    assert (
        value(text, "shopper_provider_requests_total", provider="vastai", operation=operation, outcome="ok")
        >= 1
    )
    assert value(text, "shopper_provider_request_seconds_count", provider="vastai", operation=operation) >= 2
    # Ids never become label values (a timestamp sample may contain the digits by chance).
    labels = " ".join(re.findall(r"\{[^}]*\}", text))
    assert "4242" not in labels and "k-secret-123456" not in text


# One provider call, made the way the worker makes it, in a process of its own.
PROVIDER_CALL_SCRIPT = """
import os, requests, responses
from inventory.providers.vastai import VastAI

class NoWait:
    def wait(self): pass
    def penalize(self, retry_after=None): return 0.0
    def relax(self): pass

vast = VastAI(base_url="https://vast.test", api_key="k", timeout=5, session=requests.Session())
vast.limiter = NoWait()
with responses.RequestsMock() as rsps:
    rsps.get("https://vast.test/api/v0/instances/4242/",
             json={"instances": {"id": 4242, "label": "shopper-x", "actual_status": "running"}})
    vast.get_instance("4242")
print(os.getpid())
"""


def test_provider_calls_of_other_processes_appear_in_multiprocess_mode(scrape, tmp_path, monkeypatch):
    """docker-compose.yml and `make run` set PROMETHEUS_MULTIPROC_DIR: the calls the worker and
    the safety loop make are served by the web process's /metrics."""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    pids = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", PROVIDER_CALL_SCRIPT],
            cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        pids.append(done.stdout.strip())

    # Files are named by host and pid: containers sharing the directory repeat pids.
    host = socket.gethostname().replace("_", "-")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"{kind}_{host}-{pid}.db" for kind in ("counter", "histogram") for pid in pids)

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    text = scrape()
    operation = "GET /api/v0/instances/{id}/"
    assert (
        value(text, "shopper_provider_requests_total", provider="vastai", operation=operation, outcome="ok")
        == 2
    )
    assert value(text, "shopper_provider_request_seconds_count", provider="vastai", operation=operation) == 2
    # The database collector is still there beside them.
    assert "shopper_rentals_stuck_stopping" in text
