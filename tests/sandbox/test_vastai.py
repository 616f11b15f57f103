"""The Vast.ai dialect against a real sandbox process."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote_plus

import requests

from inventory.sandbox.testing import running_sandbox

from ._util import (
    AUTH,
    cheapest_asks,
    fixture,
    make_key,
    marked_pids,
    port_open,
    ssh,
    vast_create,
    vast_get,
    vast_search,
    wait_for,
)


def test_search_operators_and_units(sandbox):
    base = sandbox.vastai_url
    offers = vast_search(
        base,
        {
            "gpu_name": {"in": ["RTX 4090", "RTX 3090"]},
            "num_gpus": {"gte": 2, "lte": 4},
            "gpu_ram": {"gte": 23000},  # MB
            "reliability": {"gt": 0.95},
            "dph_total": {"lt": 2.0},
            "geolocation": {"in": ["US", "CA"]},
            "verified": {"eq": True},
            "rented": {"eq": False},
            "cpu_cores": {"neq": None},
            "order": [["dph_total", "asc"]],
            "type": "on-demand",
            "limit": 20,
            "allocated_storage": 40,
        },
    )
    assert 0 < len(offers) <= 20
    for o in offers:
        assert o["gpu_name"] in ("RTX 4090", "RTX 3090")
        assert 2 <= o["num_gpus"] <= 4 and o["gpu_ram"] >= 23000 and o["reliability"] > 0.95
        assert o["geolocation"][-2:] in ("US", "CA") and o["verification"] == "verified"
        assert o["cpu_cores"] is not None
        # price for the allocated storage: $/GB/month over 720 h
        assert o["dph_total"] == round(o["dph_base"] + o["storage_cost"] * 40 / 720, 6) < 2.0
        assert o["search"]["totalHour"] == o["dph_total"]
    prices = [o["dph_total"] for o in offers]
    assert prices == sorted(prices)

    # MB units: 80 GB class cards only; the A100 name carries no memory size
    big = vast_search(base, {"gpu_ram": {"gte": 80000}, "gpu_name": {"eq": "A100 PCIE"}})
    assert big and {o["gpu_ram"] for o in big} == {81920}
    small = vast_search(base, {"gpu_ram": {"lt": 41000}, "gpu_name": {"eq": "A100 PCIE"}})
    assert small and {o["gpu_ram"] for o in small} == {40960}
    notin = vast_search(
        base, {"gpu_name": {"notin": ["RTX 4090", "RTX 3090"]}, "num_gpus": {"eq": 8}, "limit": 50}
    )
    assert notin and all(o["gpu_name"] not in ("RTX 4090", "RTX 3090") and o["num_gpus"] == 8 for o in notin)
    assert all(o["geolocation"] is None or not o["geolocation"].endswith("US") for o in
               vast_search(base, {"geolocation": {"notin": ["US"]}, "limit": 100}))  # fmt: skip

    # the documented PUT form, same offers; unknown operator is an error
    r = requests.put(
        f"{base}/api/v0/search/asks/", json={"select_cols": ["*"], "q": {"num_gpus": {"eq": 8}, "limit": 5}}
    )
    assert r.status_code == 200 and r.json()["success"] is True and len(r.json()["offers"]) == 5
    bad = requests.post(f"{base}/api/v0/bundles/", json={"num_gpus": {"nin": [1]}})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_args"


def test_auth(sandbox):
    base = sandbox.vastai_url
    assert requests.post(f"{base}/api/v0/bundles/", json={"limit": 1}).status_code == 200  # no key needed
    r = requests.get(f"{base}/api/v1/instances/", headers={"Authorization": "Bearer invalid"})
    assert r.status_code == 401
    assert r.json() == {"success": False, "error": "auth_error", "msg": "Invalid user key"}
    assert requests.get(f"{base}/api/v1/instances/").status_code == 401
    assert requests.get(f"{base}/api/v1/instances/", params={"api_key": "k"}).status_code == 200


def test_instance_lifecycle_ssh_onstart_destroy(sandbox, tmp_path: Path):
    base = sandbox.vastai_url
    ask = cheapest_asks(base, gpu_name={"eq": "H100 SXM"}, num_gpus={"eq": 2})[0]
    onstart = (
        'echo "onstart $SHOPPER_RENTAL_ID $CONTAINER_ID" > /root/onstart.txt; '
        "nvidia-smi -L >> /root/onstart.txt"
    )
    r = vast_create(
        base, ask, env={"-p 8080:8080": "1", "SHOPPER_RENTAL_ID": "r-1"}, onstart=onstart, label="shopper-a"
    )
    assert r.status_code == 200 and r.json()["success"] is True
    iid = r.json()["new_contract"]
    assert isinstance(iid, int)

    # the ask is taken: gone from search, a second rent is no_such_ask
    assert ask not in [o["id"] for o in vast_search(base, {"id": {"eq": ask}})]
    again = vast_create(base, ask)
    assert again.status_code == 400 and "no_such_ask" in again.json()["msg"]
    assert "no_such_ask" in vast_create(base, 1).json()["msg"]

    inst = wait_for(lambda: (i := vast_get(base, iid)) and i["actual_status"] == "running" and i)
    assert set(inst) == set(fixture("vastai_instance_get.json")["found"]["body"]["instances"])
    assert inst["label"] == "shopper-a" and inst["gpu_name"] == "H100 SXM" and inst["num_gpus"] == 2
    port = int(inst["ports"]["22/tcp"][0]["HostPort"])
    assert isinstance(inst["ports"]["22/tcp"][0]["HostPort"], str)
    assert inst["public_ipaddr"].strip() == "127.0.0.1" and inst["ssh_host"] == "127.0.0.1"
    assert inst["ssh_port"] == port and "8080/tcp" in inst["ports"]
    assert ["SHOPPER_RENTAL_ID", "r-1"] in inst["extra_env"]

    key, pub = make_key(tmp_path)
    other_key, _ = make_key(tmp_path, "other")
    # nothing attached yet -> refused
    assert ssh(port, key, "true").returncode == 255
    attach = requests.post(f"{base}/api/v0/instances/{iid}/ssh/", json={"ssh_key": pub}, headers=AUTH)
    assert attach.status_code == 200 and attach.json()["success"] is True

    out = ssh(port, key, "nvidia-smi")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("NVIDIA H100 80GB HBM3") == 2 and "CUDA Version" in out.stdout
    assert "0MiB /  81559MiB" in out.stdout or "0MiB / 81559MiB" in out.stdout
    q = ssh(
        port,
        key,
        "nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits",
    )
    assert q.stdout.splitlines() == ["0, 0, 81559", "0, 0, 81559"]
    env = ssh(port, key, "echo $SHOPPER_RENTAL_ID:$CONTAINER_ID; exit 7")
    assert env.returncode == 7 and env.stdout.strip() == f"r-1:{iid}"
    assert ssh(port, other_key, "true").returncode == 255  # a key that was never attached
    assert ssh(port, key, "true", user="user").returncode == 255  # Vast logs in as root only

    # onstart ran once at boot, with the instance env and the fake nvidia-smi on PATH
    done = wait_for(lambda: (t := ssh(port, key, "cat /root/onstart.txt").stdout) and t)
    assert done.splitlines()[0] == f"onstart r-1 {iid}" and "GPU 1: NVIDIA H100 80GB HBM3" in done

    # interactive shell with a PTY
    shell = ssh(port, key, None, tty=True, stdin="echo hello-$((40+2))\nexit\n")
    assert "hello-42" in shell.stdout

    d = requests.delete(f"{base}/api/v0/instances/{iid}/", json={}, headers=AUTH)
    assert d.status_code == 200 and d.json() == {"success": True, "msg": "Instance destroyed successfully"}
    assert vast_get(base, iid) is None
    assert not port_open(port)
    wait_for(lambda: not marked_pids(sandbox, "vastai", iid), timeout=5)
    gone = requests.delete(f"{base}/api/v0/instances/{iid}/", json={}, headers=AUTH)
    assert gone.status_code == 404 and gone.json()["error"] == "no_such_instance"
    assert sandbox.instances() == []
    assert [o["id"] for o in vast_search(base, {"id": {"eq": ask}})] == [ask]  # the ask is free again


def test_states_go_null_loading_running(tmp_path: Path):
    # own process: boot delay 1 s, and a fault from SANDBOX_FAULTS at start-up
    faults = {"rules": [{"dialect": "vastai", "op": "search", "rate_limit_burst": 1}]}
    with running_sandbox(tmp_path, boot_delay=1.0, faults=faults) as sb:
        base = sb.vastai_url
        assert requests.post(f"{base}/api/v0/bundles/", json={}).status_code == 429
        iid = vast_create(base, cheapest_asks(base)[0]).json()["new_contract"]
        first = vast_get(base, iid)
        assert first["actual_status"] is None and first["ports"] is None and first["public_ipaddr"] is None
        seen = [first["actual_status"]]

        def step():
            inst = vast_get(base, iid)
            if inst["actual_status"] != seen[-1]:
                seen.append(inst["actual_status"])
            return inst["actual_status"] == "running" and inst

        inst = wait_for(step, timeout=5, interval=0.05)
        assert seen == [None, "loading", "running"]
        assert port_open(int(inst["ports"]["22/tcp"][0]["HostPort"]))


def test_poweroff_from_the_node(sandbox, tmp_path: Path):
    base = sandbox.vastai_url
    iid = vast_create(base, cheapest_asks(base)[0], onstart="sleep 600").json()["new_contract"]
    key, pub = make_key(tmp_path)
    requests.post(f"{base}/api/v0/instances/{iid}/ssh/", json={"ssh_key": pub}, headers=AUTH)
    inst = wait_for(lambda: (i := vast_get(base, iid)) and i["actual_status"] == "running" and i)
    port = inst["ssh_port"]
    assert marked_pids(sandbox, "vastai", iid)  # the onstart sleep
    ssh(port, key, "shutdown -h now")
    inst = wait_for(lambda: (i := vast_get(base, iid)) and i["actual_status"] == "exited" and i)
    assert inst["ports"] is None and inst["intended_status"] == "running"
    assert not port_open(port)
    wait_for(lambda: not marked_pids(sandbox, "vastai", iid), timeout=5)
    listed = requests.get(f"{base}/api/v1/instances/", headers=AUTH).json()
    assert [i["id"] for i in listed["instances"]] == [iid]  # still billed (disk) until destroyed
    assert requests.delete(f"{base}/api/v0/instances/{iid}/", headers=AUTH).status_code == 200


def _cli_params(**params) -> str:
    """What vastai's client._build_url does: JSON-encode each value, then quote_plus it."""
    return "&".join(f"{k}={quote_plus(json.dumps(v))}" for k, v in params.items())


def test_v1_listing_pagination_and_filters(sandbox):
    base = sandbox.vastai_url
    asks = cheapest_asks(base, 7)
    ids = []
    for n, ask in enumerate(asks):
        label = "other-label" if n == 6 else f"shopper-{n}"
        ids.append(vast_create(base, ask, label=label).json()["new_contract"])
    requests.put(f"{base}/api/v0/instances/{ids[5]}/", json={"label": None}, headers=AUTH)

    order = [{"col": "id", "dir": "asc"}]
    seen, token, pages = [], None, 0
    while True:
        params = {"select_filters": {}, "order_by": order, "limit": 3}
        if token:
            params["after_token"] = token
        body = requests.get(f"{base}/api/v1/instances/?{_cli_params(**params)}", headers=AUTH).json()
        assert body["success"] is True and body["total_instances"] == 7
        assert body["instances_found"] == len(body["instances"])
        pages += 1
        seen += [i["id"] for i in body["instances"]]
        token = body["next_token"]
        if token is None:
            break
    assert pages == 3 and seen == sorted(ids)
    assert body["label_counts"][""] == 1 and body["label_counts"]["other-label"] == 1

    filt = {"label": {"in": ["shopper-0", "shopper-1", "other-label"]}}
    body = requests.get(
        f"{base}/api/v1/instances/?{_cli_params(select_filters=filt, limit=25)}", headers=AUTH
    ).json()
    assert sorted(i["id"] for i in body["instances"]) == sorted([ids[0], ids[1], ids[6]])
    running = {"actual_status": {"in": ["running", "loading"]}}
    body = requests.get(
        f"{base}/api/v1/instances/?{_cli_params(select_filters=running)}", headers=AUTH
    ).json()
    assert len(body["instances"]) == 7
