"""The field-notes faults (FIELD_NOTES "What the sandbox should reproduce"), seen from outside:
each answers what the real provider answered, in the real shape."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from inventory.sandbox import faults

from ._util import (
    AUTH,
    cheapest_asks,
    fixture,
    td_body,
    td_create,
    td_pick,
    vast_create,
    vast_get,
    vast_search,
)


def _td_create_at(sandbox, location_id: str, v0: str) -> requests.Response:
    return td_create(sandbox.tensordock_url, td_body(location_id, v0, ssh_key="ssh-ed25519 AAAA x"))


def _locations(sandbox) -> list[dict]:
    return requests.get(f"{sandbox.tensordock_url}/locations", timeout=10).json()["data"]["locations"]


def test_no_public_ip_answers_the_live_text_in_a_200_and_creates_nothing(sandbox):
    location_id, v0 = td_pick(sandbox.tensordock_url)
    sandbox.set_faults([{"dialect": "tensordock", "no_public_ip": 1.0}])
    r = _td_create_at(sandbox, location_id, v0)
    assert r.status_code == 200
    assert r.json() == {"status": 400, "error": "No available public IPs on hostnode"}
    assert sandbox.instances() == []
    # /locations still offers a dedicated IP there (stale, as live); /hostnodes says no.
    loc = next(x for x in _locations(sandbox) if x["id"] == location_id)
    assert all(g["network_features"]["dedicated_ip_available"] for g in loc["gpus"] if g["v0Name"] == v0)
    nodes = requests.get(f"{sandbox.tensordock_url}/hostnodes", timeout=10).json()["data"]["hostnodes"]
    assert {n["available_resources"]["has_public_ip_available"] for n in nodes} == {False}


def test_no_public_ip_is_a_property_of_some_locations_the_same_for_everyone(sandbox):
    sandbox.set_faults({"seed": 3, "rules": [{"dialect": "tensordock", "no_public_ip": 0.3}]})

    def without_ip() -> set[str]:
        nodes = requests.get(f"{sandbox.tensordock_url}/hostnodes", timeout=10).json()["data"]["hostnodes"]
        return {n["location_id"] for n in nodes if not n["available_resources"]["has_public_ip_available"]}

    first = without_ip()
    assert first == without_ip()  # sticky, not a coin per call
    assert 0 < len(first) < len(_locations(sandbox))
    ok_location = next(loc for loc in _locations(sandbox) if loc["id"] not in first and loc["gpus"])
    entry = next(g for g in ok_location["gpus"] if g["max_count"] > 0)
    r = _td_create_at(sandbox, ok_location["id"], entry["v0Name"])
    assert r.status_code == 201, r.text


def test_stale_location_says_no_available_nodes_while_listing_stock(sandbox):
    location_id, v0 = td_pick(sandbox.tensordock_url)
    sandbox.set_faults([{"dialect": "tensordock", "stale_locations": 1.0, "stale_minutes": 5}])
    r = _td_create_at(sandbox, location_id, v0)
    assert (r.status_code, r.json()) == (200, {"status": 400, "error": "No available nodes found"})
    loc = next(x for x in _locations(sandbox) if x["id"] == location_id)
    assert next(g for g in loc["gpus"] if g["v0Name"] == v0)["max_count"] > 0
    assert sandbox.instances() == []


def test_deploy_error_at_named_locations_only(sandbox):
    location_id, v0 = td_pick(sandbox.tensordock_url)
    sandbox.set_faults([{"dialect": "tensordock", "deploy_error_locations": [location_id]}])
    r = _td_create_at(sandbox, location_id, v0)
    assert (r.status_code, r.json()) == (200, {"status": 500, "error": "unexpected error during deployment"})
    assert sandbox.instances() == []


def test_td_create_401_while_reads_work(sandbox):
    location_id, v0 = td_pick(sandbox.tensordock_url)
    sandbox.set_faults([{"dialect": "tensordock", "op": "create", "fail_next": 1, "error_status": 401}])
    r = _td_create_at(sandbox, location_id, v0)
    assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"})
    assert requests.get(f"{sandbox.tensordock_url}/instances", headers=AUTH, timeout=10).status_code == 200


def test_no_such_ask_is_the_live_invalid_args_body_and_search_lags(sandbox):
    base = sandbox.vastai_url
    sandbox.set_faults([{"dialect": "vastai", "search_stale_s": 60}])
    ask = cheapest_asks(base)[0]
    assert vast_create(base, ask).status_code == 200
    # Rented a moment ago, still in search (VA-NOSUCHASK: the menu keeps showing it) ...
    assert ask in [o["id"] for o in vast_search(base, {"id": {"eq": ask}})]
    again = vast_create(base, ask)
    live = fixture("VA-NOSUCHASK.json")["create_offer_gone"]
    expected = dict(live["body"], ask_id=ask)
    expected["msg"] = live["body"]["msg"].replace("29907796", str(ask))
    assert (again.status_code, again.json()) == (live["status"], expected)
    sandbox.set_faults({})  # ... and without the fault it is gone from search at once
    assert ask not in [o["id"] for o in vast_search(base, {"id": {"eq": ask}})]


def test_slow_stuck_and_oci_failed_vast_loads(sandbox):
    base = sandbox.vastai_url
    asks = cheapest_asks(base, 3)
    sandbox.set_faults([{"dialect": "vastai", "loading_s": [30, 30]}])
    slow = vast_create(base, asks[0]).json()["new_contract"]
    sandbox.set_faults([{"dialect": "vastai", "loading_s": [0, 0], "stuck_loading": 1.0}])
    stuck = vast_create(base, asks[1]).json()["new_contract"]
    sandbox.set_faults([{"dialect": "vastai", "oci_fail": 1.0}])
    oci = vast_create(base, asks[2]).json()["new_contract"]
    sandbox.set_faults({})

    assert vast_get(base, slow)["actual_status"] is None  # first half of 30 s: no status yet
    stuck_view = vast_get(base, stuck)
    assert stuck_view["actual_status"] == "loading" and "Pulling image" in stuck_view["status_msg"]
    oci_view = vast_get(base, oci)
    assert oci_view["actual_status"] == "created"
    assert ": OCI runtime create failed:" in oci_view["status_msg"]
    phases = {i["id"]: i["phase"] for i in sandbox.instances()}
    assert phases[str(stuck)] != "running" and phases[str(oci)] != "running"
    assert not any(i["ssh_open"] for i in sandbox.instances())


CLIENT = """
import sys, requests
url, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
codes = []
for _ in range(n):
    r = requests.post(url, json={"limit": 1}, headers={"Authorization": "Bearer " + key}, timeout=10)
    codes.append(r.status_code)
    if r.status_code == 429:
        assert "Retry-After" not in r.headers
        assert "API requests too frequent" in r.text, r.text
print(" ".join(map(str, codes)))
"""


def _client(sandbox, key: str, n: int) -> list[int]:
    url = f"{sandbox.vastai_url}/api/v0/bundles/"
    out = subprocess.run([sys.executable, "-c", CLIENT, url, key, str(n)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [int(c) for c in out.stdout.split()]


def test_rate_limit_is_shared_by_every_process_using_one_key(sandbox):
    # 1 request per 100 s refill, burst 3: only the first three calls of the key pass at all.
    sandbox.set_faults([{"dialect": "vastai", "op": "search", "rate_per_s": 0.01, "rate_burst": 3}])
    assert _client(sandbox, "key-a", 3) == [200, 200, 200]
    assert _client(sandbox, "key-a", 2) == [429, 429]  # another process, same key: no budget left
    assert _client(sandbox, "key-b", 1) == [200]  # another key has its own


def test_rate_limit_json_body_is_the_live_one(sandbox):
    sandbox.set_faults({"seed": 1, "rules": [{"dialect": "vastai", "rate_per_s": 0.01, "rate_burst": 1}]})
    requests.post(f"{sandbox.vastai_url}/api/v0/bundles/", json={"limit": 1}, headers=AUTH, timeout=10)
    bodies = [
        requests.post(f"{sandbox.vastai_url}/api/v0/bundles/", json={"limit": 1}, headers=AUTH, timeout=10)
        for _ in range(12)
    ]
    assert {r.status_code for r in bodies} == {429}
    as_json = [r.json() for r in bodies if r.headers["Content-Type"].startswith("application/json")]
    assert as_json and all(b == fixture("VA-RATELIMIT.json")["json"]["body"] for b in as_json)
    assert any(r.text == "API requests too frequent" for r in bodies)


def test_td_list_shapes_rotate(sandbox):
    location_id, v0 = td_pick(sandbox.tensordock_url)
    assert _td_create_at(sandbox, location_id, v0).status_code == 201
    sandbox.set_faults([{"dialect": "tensordock", "list_shape": "rotate"}])
    shapes = set()
    for _ in range(3):
        data = requests.get(f"{sandbox.tensordock_url}/instances", headers=AUTH, timeout=10).json()["data"]
        if isinstance(data, list):
            shapes.add("array")
        elif "attributes" in data:
            shapes.add("attributes")
        else:
            shapes.add("instances")
    assert shapes == {"array", "attributes", "instances"}


@pytest.mark.parametrize(
    "rule",
    [
        {"no_public_ip": 1.5},
        {"stale_locations": "often"},
        {"loading_s": [60, 10]},
        {"rate_per_s": 0},
        {"rate_scope": "planet"},
        {"list_shape": "tree"},
        {"deploy_error_locations": "all"},
    ],
)
def test_bad_fault_values_are_refused_and_change_nothing(sandbox, rule):
    sandbox.set_faults([{"dialect": "tensordock", "no_public_ip": 0.2}])
    before = sandbox.get_faults()
    r = requests.put(f"{sandbox.url}/_sandbox/faults", json=[rule], timeout=10)
    assert r.status_code == 400 and "must" in r.json()["error"]
    assert sandbox.get_faults() == before


def test_presets_none_and_field():
    assert faults.parse("none") == {"seed": 0, "rules": []}
    assert faults.parse("") is None
    assert faults.parse("field") == faults.FIELD_MIX
    assert faults.Faults("field").to_json()["rules"]  # the mix itself is valid
    with pytest.raises(faults.FaultConfigError):
        faults.parse("sometimes")
