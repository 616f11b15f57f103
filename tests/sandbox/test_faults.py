"""Fault injection, configured at runtime through PUT /_sandbox/faults."""

from __future__ import annotations

import time

import requests

from ._util import AUTH, cheapest_asks, td_body, td_create, td_pick, vast_create, vast_get, wait_for


def test_rate_limit_burst(sandbox):
    sandbox.set_faults({"rules": [{"dialect": "*", "op": "search", "rate_limit_burst": 2}]})
    for _ in range(2):
        r = requests.post(f"{sandbox.vastai_url}/api/v0/bundles/", json={"limit": 1})
        assert r.status_code == 429 and r.text == "API requests too frequent"
        assert r.headers["Content-Type"].startswith("text/plain") and "Retry-After" not in r.headers
    assert requests.post(f"{sandbox.vastai_url}/api/v0/bundles/", json={"limit": 1}).status_code == 200
    assert sandbox.get_faults()["rules"][0]["rate_limit_burst"] == 0

    sandbox.set_faults([{"dialect": "tensordock", "op": "list", "rate_limit_burst": 1}])
    r = requests.get(f"{sandbox.tensordock_url}/instances", headers=AUTH)
    assert r.status_code == 429 and r.json() == {"error": "Too many requests"}
    assert requests.get(f"{sandbox.tensordock_url}/instances", headers=AUTH).status_code == 200
    assert requests.post(f"{sandbox.vastai_url}/api/v0/bundles/", json={"limit": 1}).status_code == 200


def test_fail_next_error_rate_and_slow(sandbox):
    base = sandbox.vastai_url
    sandbox.set_faults(
        {"rules": [{"dialect": "vastai", "op": ["get", "list"], "fail_next": 2, "error_status": 503}]}
    )
    codes = [requests.get(f"{base}/api/v1/instances/", headers=AUTH).status_code for _ in range(3)]
    assert codes == [503, 503, 200]

    sandbox.set_faults({"seed": 1, "rules": [{"op": "search", "error_rate": 0.5}]})
    codes = [requests.post(f"{base}/api/v0/bundles/", json={"limit": 1}).status_code for _ in range(40)]
    assert set(codes) == {200, 500} and 8 < codes.count(500) < 32

    sandbox.set_faults({"rules": [{"dialect": "tensordock", "slow_ms": 300}]})
    t0 = time.monotonic()
    assert requests.get(f"{sandbox.tensordock_url}/locations").status_code == 200
    assert time.monotonic() - t0 >= 0.3
    bad = requests.put(f"{sandbox.url}/_sandbox/faults", json={"rules": [{"bogus": 1}]})
    assert bad.status_code == 400


def test_create_error_but_created(sandbox):
    base = sandbox.vastai_url
    sandbox.set_faults({"rules": [{"op": "create", "create_error_but_created": 1}]})
    r = vast_create(base, cheapest_asks(base)[0], label="shopper-ghost")
    assert r.status_code == 500
    listed = requests.get(f"{base}/api/v1/instances/", headers=AUTH).json()["instances"]
    assert [i["label"] for i in listed] == ["shopper-ghost"]  # found by label after the error
    ok = vast_create(base, cheapest_asks(base)[0], label="shopper-fine")  # the count is used up
    assert ok.status_code == 200 and ok.json()["success"] is True

    sandbox.set_faults(
        {
            "rules": [
                {"dialect": "vastai", "create_error_but_created": 1, "create_error_mode": "success_false"}
            ]
        }
    )
    r = vast_create(base, cheapest_asks(base)[0], label="shopper-half")
    assert r.status_code == 200 and r.json()["success"] is False and vast_get(base, r.json()["new_contract"])

    sandbox.set_faults({"rules": [{"dialect": "tensordock", "create_error_but_created": 1.0}]})
    location_id, v0 = td_pick(sandbox.tensordock_url)
    r = td_create(
        sandbox.tensordock_url,
        td_body(location_id, v0, name="shopper-td-ghost", ssh_key="ssh-ed25519 AAAA x"),
    )
    assert r.status_code == 500
    names = [i["label"] for i in sandbox.instances() if i["dialect"] == "tensordock"]
    assert names == ["shopper-td-ghost"]


def test_underbid_interruptible_is_created_stopped(sandbox):
    base = sandbox.vastai_url
    r = vast_create(base, cheapest_asks(base)[0], price=0.0001)
    body = r.json()
    assert r.status_code == 200 and body["success"] is False and body["error"] == "bid_too_low"
    inst = vast_get(base, body["new_contract"])
    assert (
        inst["actual_status"] == inst["cur_state"] == inst["intended_status"] == "stopped" and inst["is_bid"]
    )


def test_listing_lag(sandbox):
    sandbox.set_faults({"rules": [{"listing_lag_s": 1.0}]})
    base = sandbox.vastai_url
    iid = vast_create(base, cheapest_asks(base)[0]).json()["new_contract"]
    assert vast_get(base, iid) is not None  # GET sees it at once
    assert requests.get(f"{base}/api/v1/instances/", headers=AUTH).json()["instances"] == []
    location_id, v0 = td_pick(sandbox.tensordock_url)
    tid = td_create(sandbox.tensordock_url, td_body(location_id, v0, ssh_key="ssh-ed25519 AAAA x")).json()[
        "data"
    ]["id"]
    assert requests.get(f"{sandbox.tensordock_url}/instances", headers=AUTH).json()["data"]["instances"] == []
    assert requests.get(f"{sandbox.tensordock_url}/instances/{tid}", headers=AUTH).status_code == 200
    wait_for(lambda: requests.get(f"{base}/api/v1/instances/", headers=AUTH).json()["instances"], timeout=3)
    wait_for(
        lambda: requests.get(f"{sandbox.tensordock_url}/instances", headers=AUTH).json()["data"]["instances"]
    )


def test_destroy_fails_n_times(sandbox):
    sandbox.set_faults({"rules": [{"op": "destroy", "destroy_fail_times": 2}]})
    base = sandbox.vastai_url
    iid = vast_create(base, cheapest_asks(base)[0]).json()["new_contract"]
    codes = [requests.delete(f"{base}/api/v0/instances/{iid}/", headers=AUTH).status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    assert vast_get(base, iid) is None
    location_id, v0 = td_pick(sandbox.tensordock_url)
    tid = td_create(sandbox.tensordock_url, td_body(location_id, v0, ssh_key="ssh-ed25519 AAAA x")).json()[
        "data"
    ]["id"]
    codes = [
        requests.delete(f"{sandbox.tensordock_url}/instances/{tid}", headers=AUTH).status_code
        for _ in range(4)
    ]
    assert codes == [500, 500, 200, 404]
