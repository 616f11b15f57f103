"""Measured value (issue 18): ``POST /api/v1/agent/benchmark``, the heartbeat's ``benchmark`` ask,
and the measured figures on the offers of the machine (API list and detail, rent page)."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.urls import reverse

from inventory.measured import machine_key
from inventory.menu import build_menu
from inventory.models import MachineBenchmark
from inventory.providers.tensordock.names import tensordock_gpu_type
from inventory.providers.vastai.names import vast_gpu_type
from inventory.sandbox.bench import SPEC
from inventory.sandbox.catalog import TD_GPUS, VAST_GPUS
from sessions.models import Status
from tests.factories import RentalFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/agent/benchmark"
DATA = Path(__file__).resolve().parents[2] / "inventory" / "data"
GOOD = {
    "rental_id": "x",
    "dtype": "bf16",
    "tflops": 131.27,
    "gbps": 880.4,
    "gpu_name": "NVIDIA GeForce RTX 4090",
}


@pytest.fixture
def offer(make_offer):
    return make_offer(provider="vastai", provider_offer_id="4242", gpu_type="RTX 4090 24GB", gpu_count=2)


@pytest.fixture
def rental(user, offer):
    return RentalFactory(consumer=user, offer=offer, status=Status.ACTIVE, agent_token="tok", running=True)


def report(client, body=GOOD, token="tok", raw=None):
    data = raw if raw is not None else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")


def beat(client, token="tok"):
    return client.post(
        "/api/v1/agent/heartbeat",
        data="{}",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


# --- the report ----------------------------------------------------------------------------------
def test_a_report_is_stored_for_the_machine_once_per_rental(client, rental):
    r = report(client)
    assert r.status_code == 201, r.content
    assert r.json() == {"recorded": True}
    [row] = MachineBenchmark.objects.all()
    assert (row.provider, row.machine, row.provider_offer_id) == ("vastai", "4242", "4242")
    assert (row.gpu_type, row.gpu_count, row.gpu_name) == ("RTX 4090 24GB", 2, "NVIDIA GeForce RTX 4090")
    assert (row.dtype, row.tflops, row.gbps, row.rental_id) == (
        "bf16",
        Decimal("131.3"),
        Decimal("880.4"),
        rental.pk,
    )

    again = report(client, {**GOOD, "tflops": 999})
    assert again.status_code == 409 and again.json()["code"] == "already_reported"
    assert MachineBenchmark.objects.get().tflops == Decimal("131.3")  # the first one stands


@pytest.mark.parametrize(
    "body, message",
    [
        ({**GOOD, "dtype": "fp8"}, "dtype must be one of bf16, fp32"),
        ({k: v for k, v in GOOD.items() if k != "dtype"}, "dtype must be one of"),
        ({**GOOD, "tflops": 0}, "tflops must be a number above 0"),
        ({**GOOD, "tflops": -5}, "tflops must be a number above 0"),
        ({**GOOD, "tflops": 10_001}, "at most 10000"),
        ({**GOOD, "tflops": "131"}, "tflops must be a number"),
        ({**GOOD, "tflops": True}, "tflops must be a number"),
        ({k: v for k, v in GOOD.items() if k != "gbps"}, "gbps must be a number"),
        ({**GOOD, "gbps": 1e9}, "gbps must be a number above 0 and at most 100000"),
        ({**GOOD, "gpu_name": "x" * 65}, "gpu_name must be a short string"),
        ({**GOOD, "gpu_name": 7}, "gpu_name must be a short string"),
        ([GOOD], "must be a JSON object"),
    ],
)
def test_a_bad_report_is_a_400_and_nothing_is_stored(client, rental, body, message):
    r = report(client, body)
    assert r.status_code == 400 and r.json()["code"] == "invalid"
    assert message in r.json()["detail"]
    assert MachineBenchmark.objects.count() == 0


def test_not_json_and_nan_are_400(client, rental):
    assert report(client, raw="{nope").status_code == 400
    assert report(client, raw='{"dtype": "bf16", "tflops": NaN, "gbps": 1}').status_code == 400
    assert MachineBenchmark.objects.count() == 0


def test_before_the_handoff_or_with_a_bad_token_nothing_is_stored(client, user, offer):
    RentalFactory(consumer=user, offer=offer, status=Status.VERIFYING, agent_token="early")
    r = report(client, token="early")
    assert r.status_code == 409 and r.json()["code"] == "not_active"
    assert report(client, token="wrong").status_code == 401
    assert MachineBenchmark.objects.count() == 0


# --- the heartbeat asks once ----------------------------------------------------------------------
def test_the_heartbeat_asks_for_a_benchmark_once_the_rental_is_active_until_it_reported(
    client, user, offer, rental, settings
):
    booting = RentalFactory(consumer=user, offer=offer, status=Status.VERIFYING, agent_token="early")
    assert beat(client, token="early").json()["benchmark"] is False  # before the handoff
    assert beat(client).json()["benchmark"] is True
    report(client)
    assert beat(client).json()["benchmark"] is False
    settings.SHOPPER_AGENT_BENCHMARK = False
    booting.status = Status.ACTIVE
    booting.save(update_fields=["status"])
    assert beat(client, token="early").json()["benchmark"] is False  # turned off


# --- shown on the machine's offers ----------------------------------------------------------------
def test_the_measured_figures_show_on_the_machines_offers_only(client, api_client, make_offer, offer, rental):
    other_count = make_offer(provider="vastai", provider_offer_id="4243", gpu_type="RTX 4090 24GB")
    td_same_place = make_offer(provider="tensordock", provider_offer_id="loc-1:geforcertx4090-pcie-24gb:1")
    td_other_gpu = make_offer(
        provider="tensordock", provider_offer_id="loc-1:h100-sxm5-80gb:2", gpu_type="H100 SXM 80GB"
    )
    report(client)
    td_rental = RentalFactory(offer=td_same_place, status=Status.ACTIVE, agent_token="td", running=True)
    assert report(client, {**GOOD, "tflops": 120, "gbps": 800}, token="td").status_code == 201
    assert machine_key("tensordock", td_other_gpu.provider_offer_id) == machine_key(
        "tensordock", td_rental.provider_offer_id
    )

    detail = api_client.get(f"/api/v1/inventory/{offer.pk}").json()
    measured_at = MachineBenchmark.objects.get(rental_id=rental.pk).measured_at
    assert detail["measured"] == {
        "tflops": "131.3",
        "gbps": "880.4",
        "dtype": "bf16",
        "measured_at": measured_at.isoformat().replace("+00:00", "Z"),
        "runs": 1,
    }
    rows = {r["id"]: r for r in api_client.get("/api/v1/inventory", {"page_size": 50}).json()["results"]}
    assert rows[str(offer.pk)]["measured"]["tflops"] == "131.3"
    assert rows[str(other_count.pk)]["measured"] is None  # another Vast machine
    assert rows[str(td_same_place.pk)]["measured"]["tflops"] == "120.0"
    assert rows[str(td_other_gpu.pk)]["measured"] is None  # same TensorDock location, other GPU model

    client.force_login(rental.consumer)
    page = client.get(reverse("sessions:rent", args=[offer.pk])).content.decode()
    assert "measured 131.3 TFLOPS BF16 · 880.4 GB/s per GPU" in page
    assert "measured" not in client.get(reverse("sessions:rent", args=[other_count.pk])).content.decode()


def test_the_menu_shows_the_latest_run_of_a_machine_and_counts_them(make_offer, offer, rental, client, user):
    report(client)
    later = RentalFactory(consumer=user, offer=offer, status=Status.ACTIVE, agent_token="t2", running=True)
    assert report(client, {**GOOD, "tflops": 140.04}, token="t2").status_code == 201
    MachineBenchmark.objects.filter(rental_id=later.pk).update(
        measured_at=MachineBenchmark.objects.get(rental_id=rental.pk).measured_at.replace(year=2099)
    )
    menu = build_menu("test")
    measured = menu.measured[("vastai", "4242", "RTX 4090 24GB")]
    assert (measured["tflops"], measured["runs"]) == ("140.0", 2)


def test_the_schema_documents_measured_and_the_benchmark_endpoint(api_client):
    schema = api_client.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    text = schema.content.decode()
    assert schema.status_code == 200
    assert "/api/v1/agent/benchmark" in text and "AgentBenchmarkRequest" in text
    assert "Measured" in text and "already_reported" in text


# --- the sandbox's fake benchmark ---------------------------------------------------------------
def test_the_sandbox_bench_table_is_the_spec_table_for_every_sandbox_gpu():
    """Every GPU a sandbox machine can have gets plausible figures, copied right from the spec CSV
    (BF16 dense from compute capability 8.0, FP32 before it, as the agent's snippet picks)."""
    specs = {r["canonical_name"]: r for r in csv.DictReader((DATA / "gpu_specs.csv").open())}
    machines = [(g.smi_name, vast_gpu_type(g.name, g.ram_mb)[0]) for g in VAST_GPUS]
    machines += [(g.smi_name, tensordock_gpu_type(g.v0_name)[0]) for g in TD_GPUS]
    for smi_name, canonical in machines:
        row = specs[canonical]
        bf16 = float(row["compute_capability"]) >= 8.0
        tflops = row["fp16_bf16_dense_tflops"] if bf16 else row["fp32_tflops"]
        expected = ("bf16" if bf16 else "fp32", float(tflops), float(row["memory_bandwidth_gbps"]))
        assert SPEC[smi_name] == expected, smi_name
    assert set(SPEC) == {smi for smi, _ in machines}
