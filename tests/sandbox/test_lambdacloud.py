"""The Lambda Cloud API v1 dialect against a real sandbox process, pinned to the lambda_v1_* fixtures."""

from __future__ import annotations

import base64
from pathlib import Path

import requests

from ._util import AUTH, fixture, make_key, ssh, wait_for

LABEL = "shopper-6f1c2e0a-3b7d-4c9e-9a51-0d2f8b7e4c13"


def types(base: str) -> dict:
    r = requests.get(f"{base}/instance-types", headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def pick(base: str) -> tuple[str, str]:
    """(region, instance type) with capacity."""
    for name, entry in types(base).items():
        if entry["regions_with_capacity_available"]:
            return entry["regions_with_capacity_available"][0]["name"], name
    raise AssertionError("Lambda is sold out everywhere")


def add_key(base: str, name: str, public_key: str) -> requests.Response:
    return requests.post(f"{base}/ssh-keys", json={"name": name, "public_key": public_key}, headers=AUTH)


def launch(base: str, region: str, type_name: str, key_name: str, **extra) -> requests.Response:
    payload = {
        "region_name": region,
        "instance_type_name": type_name,
        "ssh_key_names": [key_name],
        "file_system_names": [],
        "quantity": 1,
        "name": LABEL,
        **extra,
    }
    return requests.post(f"{base}/instance-operations/launch", json=payload, headers=AUTH, timeout=10)


def get(base: str, instance_id: str) -> requests.Response:
    return requests.get(f"{base}/instances/{instance_id}", headers=AUTH, timeout=10)


def test_instance_types_shape_cents_and_sold_out(sandbox):
    base = sandbox.lambda_url
    data = types(base)
    sample = next(iter(fixture("lambda_v1_instance_types.json")["success"]["body"]["data"].values()))
    entry = next(iter(data.values()))
    assert set(entry) == set(sample) and set(entry["instance_type"]) == set(sample["instance_type"])
    assert set(entry["instance_type"]["specs"]) == set(sample["instance_type"]["specs"])
    assert all(isinstance(e["instance_type"]["price_cents_per_hour"], int) for e in data.values())
    assert data["gpu_1x_a10"]["instance_type"]["description"] == "1x A10 (24 GB PCIe)"
    # Some types are sold out everywhere (an empty list), others have capacity somewhere.
    counts = [len(e["regions_with_capacity_available"]) for e in data.values()]
    assert 0 in counts and any(counts)
    unauthorized = requests.get(f"{base}/instance-types", timeout=10)
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["code"] == "global/invalid-api-key"
    basic = base64.b64encode(b"some-key:").decode()
    assert (
        requests.get(f"{base}/instance-types", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    )


def test_ssh_keys_by_name(sandbox):
    base = sandbox.lambda_url
    added = add_key(base, "shopper-k1", "ssh-ed25519 AAAAC3Nza k1")
    assert added.status_code == 200
    assert set(added.json()["data"]) == set(
        fixture("lambda_v1_ssh_keys.json")["add_existing_key"]["body"]["data"]
    )
    assert add_key(base, "shopper-k1", "ssh-ed25519 AAAAC3Nza other").json()["error"]["code"] == (
        "global/invalid-parameters"
    )
    assert add_key(base, "x" * 65, "ssh-ed25519 AAAA x").status_code == 400
    generated = requests.post(f"{base}/ssh-keys", json={"name": "gen"}, headers=AUTH).json()["data"]
    assert generated["private_key"].startswith("-----BEGIN") and generated["public_key"].startswith("ssh-")
    keys = requests.get(f"{base}/ssh-keys", headers=AUTH).json()["data"]
    assert {k["name"] for k in keys} >= {"shopper-k1", "gen"} and "private_key" not in keys[-1]
    key_id = next(k["id"] for k in keys if k["name"] == "shopper-k1")
    assert requests.delete(f"{base}/ssh-keys/{key_id}", headers=AUTH).json() == {"data": {}}
    gone = requests.delete(f"{base}/ssh-keys/{key_id}", headers=AUTH)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "global/object-does-not-exist"


def test_launch_boot_ssh_as_ubuntu_user_data_and_terminate(sandbox, tmp_path: Path):
    base = sandbox.lambda_url
    region, type_name = pick(base)
    key, pub = make_key(tmp_path)
    add_key(base, LABEL, pub)
    sandbox.set_faults({"rules": [{"dialect": "lambda", "loading_s": [1.5, 1.5]}]})
    user_data = "#!/bin/bash\necho agent-ran > /home/ubuntu/agent.txt\nsleep 600\n"
    r = launch(base, region, type_name, LABEL, user_data=user_data)
    assert r.status_code == 200 and set(r.json()["data"]) == {"instance_ids"}
    instance_id = r.json()["data"]["instance_ids"][0]
    booting = get(base, instance_id).json()["data"]
    assert booting["status"] == "booting" and "ip" not in booting  # absent while booting
    assert set(booting) == set(fixture("lambda_v1_instance_get.json")["booting"]["body"]["data"])
    active = wait_for(lambda: (i := get(base, instance_id).json()["data"])["status"] == "active" and i)
    assert set(active) == set(fixture("lambda_v1_instance_get.json")["active"]["body"]["data"]) | {
        "sandbox_ssh_port"
    }
    assert active["name"] == LABEL and active["ssh_key_names"] == [LABEL] and active["ip"] == "127.0.0.1"
    port = active["sandbox_ssh_port"]
    # The launch's registered key is installed for ubuntu by Lambda; root gets nothing.
    out = wait_for(
        lambda: (o := ssh(port, key, "nvidia-smi -L; cat ~/agent.txt", user="ubuntu")).returncode == 0 and o
    )
    assert "GPU 0: NVIDIA" in out.stdout and "agent-ran" in out.stdout
    assert ssh(port, key, "true", user="root").returncode == 255
    listed = requests.get(f"{base}/instances", headers=AUTH).json()["data"]
    assert [i["id"] for i in listed] == [instance_id]
    term = requests.post(
        f"{base}/instance-operations/terminate", json={"instance_ids": [instance_id]}, headers=AUTH
    )
    terminated = term.json()["data"]["terminated_instances"]
    assert [(i["id"], i["status"]) for i in terminated] == [(instance_id, "terminating")]
    assert get(base, instance_id).json() == fixture("lambda_v1_terminate.json")["not_found"]["body"] | {
        "error": {"code": "global/object-does-not-exist", "message": "Specified instance does not exist."}
    }
    again = requests.post(
        f"{base}/instance-operations/terminate", json={"instance_ids": [instance_id]}, headers=AUTH
    )
    assert again.status_code == 404


def test_cloud_config_runcmd_runs(sandbox, tmp_path: Path):
    base = sandbox.lambda_url
    region, type_name = pick(base)
    key, pub = make_key(tmp_path)
    add_key(base, "k", pub)
    user_data = "#cloud-config\nruncmd:\n  - [sh, -c, 'echo from-runcmd > /home/ubuntu/rc.txt']\n"
    instance_id = launch(base, region, type_name, "k", user_data=user_data).json()["data"]["instance_ids"][0]
    active = wait_for(lambda: (i := get(base, instance_id).json()["data"])["status"] == "active" and i)
    out = wait_for(
        lambda: (o := ssh(active["sandbox_ssh_port"], key, "cat rc.txt", user="ubuntu")).returncode == 0 and o
    )
    assert out.stdout.strip() == "from-runcmd"


def test_launch_refusals(sandbox):
    base = sandbox.lambda_url
    region, type_name = pick(base)
    add_key(base, "k", "ssh-ed25519 AAAA k")
    add_key(base, "k2", "ssh-ed25519 AAAA k2")
    two = requests.post(
        f"{base}/instance-operations/launch",
        json={"region_name": region, "instance_type_name": type_name, "ssh_key_names": ["k", "k2"]},
        headers=AUTH,
    )
    assert two.status_code == 400 and two.json()["error"]["code"] == "global/invalid-parameters"
    unknown_key = launch(base, region, type_name, "nobody")
    assert (
        unknown_key.status_code == 404
        and unknown_key.json()["error"]["code"] == "global/object-does-not-exist"
    )
    assert launch(base, region, type_name, "k", name="x" * 65).status_code == 400
    sold_out = next(n for n, e in types(base).items() if not e["regions_with_capacity_available"])
    refused = launch(base, "us-east-1", sold_out, "k")
    assert refused.status_code == 400
    assert refused.json() == fixture("lambda_v1_launch.json")["insufficient_capacity"]["body"]
    assert not requests.get(f"{base}/instances", headers=AUTH).json()["data"]


def test_capacity_is_used_up_and_comes_back(sandbox):
    base = sandbox.lambda_url
    region, type_name = pick(base)
    add_key(base, "k", "ssh-ed25519 AAAA k")
    ids = []
    while any(r["name"] == region for r in types(base)[type_name]["regions_with_capacity_available"]):
        ids.append(launch(base, region, type_name, "k").json()["data"]["instance_ids"][0])
    assert ids and launch(base, region, type_name, "k").json()["error"]["code"].endswith(
        "insufficient-capacity"
    )
    requests.post(f"{base}/instance-operations/terminate", json={"instance_ids": ids[:1]}, headers=AUTH)
    assert any(r["name"] == region for r in types(base)[type_name]["regions_with_capacity_available"])


def test_faults_capacity_unhealthy_and_launch_rate_limit(sandbox):
    base = sandbox.lambda_url
    region, type_name = pick(base)
    add_key(base, "k", "ssh-ed25519 AAAA k")
    sandbox.set_faults({"rules": [{"dialect": "lambda", "no_capacity": 1.0}]})
    r = launch(base, region, type_name, "k")
    assert (
        r.status_code == 400
        and r.json()["error"]["code"] == "instance-operations/launch/insufficient-capacity"
    )
    sandbox.set_faults({"rules": [{"dialect": "lambda", "stuck_loading": 1.0}]})
    stuck = launch(base, region, type_name, "k").json()["data"]["instance_ids"][0]
    assert wait_for(lambda: get(base, stuck).json()["data"]["status"] == "unhealthy")
    # One launch per 12 s (RUNPOD_LAMBDA.md 2.1): the second within the window is a 429.
    sandbox.set_faults(
        {"rules": [{"dialect": "lambda", "op": "create", "rate_per_s": 1 / 12, "rate_burst": 1}]}
    )
    region, type_name = pick(base)
    assert launch(base, region, type_name, "k").status_code == 200
    limited = launch(base, region, type_name, "k")
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "global/too-many-requests"
    assert requests.get(f"{base}/instances", headers=AUTH).status_code == 200  # only launches are paced
