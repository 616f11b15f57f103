"""The real start-up script (``agent_onstart()``) on sandbox-cloud machines: it downloads the agent
from the (stub) shopper with python3, starts it detached, heartbeats arrive with the node's GPUs, and
``{"action": "shutdown"}`` makes the agent run the node's ``shutdown -h now`` (the sandbox's own
script: it powers the *sandbox instance* off; PID 1 is never signalled when SANDBOX_INSTANCE is set).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from inventory.providers.tensordock import TensorDock
from inventory.providers.vastai.names import vast_gpu_type
from inventory.sandbox.bench import SPEC
from inventory.sandbox.testing import running_sandbox
from sessions.models import Status
from sessions.onstart import agent_onstart
from tests.agent.conftest import TOKEN, iso_in, wait_for
from tests.factories import RentalFactory
from tests.sandbox._util import (
    AUTH,
    cheapest_asks,
    make_key,
    td_body,
    td_create,
    td_pick,
    vast_create,
    vast_get,
    vast_search,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    with running_sandbox(tmp_path_factory.mktemp("agent-sandbox"), boot_delay=0) as sb:
        yield sb


def node_env(stub, tmp_path) -> dict[str, str]:
    return {
        "SHOPPER_URL": stub.url,
        "SHOPPER_RENTAL_ID": "rental-sb",
        "SHOPPER_AGENT_TOKEN": TOKEN,
        "SHOPPER_HARD_DEADLINE": iso_in(3600),
        "SHOPPER_HEARTBEAT_SECONDS": "0.3",
        "SHOPPER_UNREACHABLE_SECONDS": "60",
        "SHOPPER_AGENT_PORT": "0",
        "TMPDIR": str(tmp_path),  # the agent's download dir and log, not the host's /tmp
    }


def logs(*dirs: Path) -> str:
    """The machines' startup.log and the agents' logs, for a failure message."""
    found = [p for d in dirs for name in ("startup.log", "agent.log") for p in d.rglob(name)]
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in found)


def check_heartbeat_then_shutdown(sandbox, tmp_path, stub, gpu_count: int, is_off) -> None:
    try:
        _check_heartbeat_then_shutdown(stub, gpu_count, is_off)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(sandbox.workdir / 'instances', tmp_path)}") from None


def _check_heartbeat_then_shutdown(stub, gpu_count: int, is_off) -> None:
    beat = wait_for(stub.heartbeats, timeout=20)[0]
    assert beat["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert beat["body"]["rental_id"] == "rental-sb"
    assert len(beat["body"]["gpus"]) == gpu_count and beat["body"]["gpus"][0]["mem_total_mb"] > 0
    assert not is_off()
    stub.answer = {"action": "shutdown"}
    wait_for(is_off, timeout=15)


def test_vast_onstart_starts_the_agent_which_powers_the_node_off(sandbox, stub, tmp_path):
    base = sandbox.vastai_url
    ask = cheapest_asks(base, num_gpus={"eq": 2})[0]
    r = vast_create(base, ask, env=node_env(stub, tmp_path), onstart=agent_onstart(), label="shopper-agent")
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    iid = r.json()["new_contract"]
    check_heartbeat_then_shutdown(
        sandbox, tmp_path, stub, 2, lambda: vast_get(base, iid)["actual_status"] == "exited"
    )
    assert any(r["path"] == "/api/v1/agent/heartbeat" for r in stub.requests)
    [agent_dir] = tmp_path.glob("shopper-agent.*")
    log = (agent_dir / "agent.log").read_text()
    assert "POWERING OFF: the shopper asked for a shutdown" in log and TOKEN not in log
    assert json.loads((agent_dir / "state.json").read_text())["powering_off"] is True


def test_tensordock_runcmd_starts_the_agent_which_powers_the_node_off(sandbox, stub, tmp_path):
    base = sandbox.tensordock_url
    location_id, v0 = td_pick(base)
    _, pub = make_key(tmp_path)
    env = node_env(stub, tmp_path)
    del env["TMPDIR"]  # the default: a directory under the machine's $HOME (the sandbox's fs/root)
    runcmd = TensorDock.cloud_init_runcmd(pub, agent_onstart(), env)
    r = td_create(base, td_body(location_id, v0, ssh_key=pub, cloud_init={"runcmd": runcmd}))
    assert r.status_code == 201, r.text
    iid = r.json()["data"]["id"]

    def stopped() -> bool:
        return requests.get(f"{base}/instances/{iid}", headers=AUTH, timeout=10).json()["status"] == "Stopped"

    check_heartbeat_then_shutdown(sandbox, tmp_path, stub, 1, stopped)
    [agent_dir] = (sandbox.workdir / "instances" / f"tensordock-{iid}" / "fs" / "root").glob(
        "shopper-agent.*"
    )
    assert "POWERING OFF" in (agent_dir / "agent.log").read_text()


@pytest.mark.django_db
def test_a_sandbox_machine_benchmarks_after_the_handoff_and_its_offer_shows_it(
    sandbox, stub, tmp_path, client, api_client, make_offer
):
    """End to end (issue 18, measured value): the real agent on a sandbox machine runs the node's
    fake benchmark when the shopper asks, reports figures at 60-90 % of its GPU's spec, and the
    shopper's API stores that very report for the offer's machine and shows it on the offer."""
    base = sandbox.vastai_url
    [ask] = vast_search(base, {"order": [["dph_total", "asc"]], "limit": 1, "num_gpus": {"eq": 1}})
    stub.answer = {"action": "continue", "benchmark": True}  # active, not measured yet
    r = vast_create(
        base, ask["id"], env=node_env(stub, tmp_path), onstart=agent_onstart(), label="shopper-bench"
    )
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    iid = r.json()["new_contract"]
    try:
        [report] = wait_for(lambda: [q for q in stub.requests if q["path"] == "/api/v1/agent/benchmark"], 30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(sandbox.workdir / 'instances', tmp_path)}") from None
    body = report["body"]
    assert report["headers"]["Authorization"] == f"Bearer {TOKEN}"
    dtype, spec_tflops, spec_gbps = SPEC[body["gpu_name"]]
    assert body["dtype"] == dtype and body["gpu_count"] == 1
    assert 0.6 * spec_tflops <= body["tflops"] <= 0.9 * spec_tflops
    assert 0.75 * spec_gbps <= body["gbps"] <= 0.92 * spec_gbps

    # The shopper's side of the same report: stored for the machine, shown on its offer.
    gpu_type, vram = vast_gpu_type(ask["gpu_name"], ask["gpu_ram"])
    offer = make_offer(provider="vastai", provider_offer_id=str(ask["id"]), gpu_type=gpu_type, vram_gb=vram)
    RentalFactory(offer=offer, status=Status.ACTIVE, agent_token=TOKEN, running=True)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    stored = client.post("/api/v1/agent/benchmark", json.dumps(body), content_type="application/json", **auth)
    assert stored.status_code == 201, stored.content
    measured = api_client.get(f"/api/v1/inventory/{offer.pk}").json()["measured"]
    assert measured["tflops"] == f"{body['tflops']:.1f}" and measured["dtype"] == dtype

    stub.answer = {"action": "shutdown"}
    wait_for(lambda: vast_get(base, iid)["actual_status"] == "exited", timeout=15)
    assert len([q for q in stub.requests if q["path"] == "/api/v1/agent/benchmark"]) == 1
