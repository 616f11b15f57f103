"""The RunPod REST v2 dialect against a real sandbox process, pinned to the runpod_v2_* fixtures."""

from __future__ import annotations

from pathlib import Path

import requests

from inventory.sandbox.catalog import RUNPOD_DATA_CENTERS

from ._util import AUTH, fixture, make_key, marked_pids, ssh, wait_for

# What RunPod's adapter sends as `args` (inventory/providers/runpod.py START_COMMAND, shortened):
# our script from the env, in the background, then the image's own /start.sh (sshd).
ARGS = (
    "bash -c '"
    'printf "%s\\n" "$SHOPPER_ONSTART" > /shopper-onstart.sh; '
    "(bash /shopper-onstart.sh > /var/log/shopper-onstart.log 2>&1 &); "
    "if [ -x /start.sh ]; then exec /start.sh; fi; echo no-start-sh'"
)


def catalog(base: str, count: int = 1, **params) -> list[dict]:
    query = {"include": "AVAILABILITY", "product": "POD", "cloud": "SECURE", "count": str(count), **params}
    r = requests.get(f"{base}/catalog/gpus", params=query, headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["gpus"]


def pick(base: str, count: int = 1) -> tuple[str, str]:
    """(gpu id, data centre) with the most stock for ``count`` GPUs (tests rent several)."""
    for level in ("HIGH", "MEDIUM", "LOW"):
        for gpu in catalog(base, count):
            for dc in gpu.get("dataCenters") or []:
                if dc["availability"] == level:
                    return gpu["id"], dc["id"]
    raise AssertionError("no RunPod stock")


def body(gpu_id: str, dc: str, public_key: str = "", **extra) -> dict:
    out = {
        "name": "shopper-6f1c2e0a-3b7d-4c9e-9a51-0d2f8b7e4c13",
        "image": "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404",
        "cloud": "SECURE",
        "gpu": {"id": gpu_id, "count": 1},
        "dataCenterIds": [dc],
        "disk": 40,
        "ports": ["22/tcp"],
        "env": {"PUBLIC_KEY": public_key} if public_key else {},
        "startSsh": True,
    }
    out.update(extra)
    return out


def create(base: str, payload: dict) -> requests.Response:
    return requests.post(f"{base}/pods", json=payload, headers=AUTH, timeout=10)


def get(base: str, pod_id: str) -> requests.Response:
    return requests.get(f"{base}/pods/{pod_id}", headers=AUTH, timeout=10)


def running(base: str, pod_id: str) -> dict:
    return wait_for(lambda: (p := get(base, pod_id).json())["status"] == "RUNNING" and p)


def test_catalog_shapes_and_availability_needs_product(sandbox):
    base = sandbox.runpod_url
    gpus = catalog(base)
    sample = fixture("runpod_v2_catalog_gpus.json")["secure_count_1"]["body"]["gpus"][0]
    stocked = [g for g in gpus if g.get("dataCenters")]
    assert len(gpus) >= 10 and len(stocked) >= 5
    assert set(stocked[0]) == set(sample)
    assert set(stocked[0]["dataCenters"][0]) == {"id", "name", "availability"}
    assert all(g["availability"] in ("NONE", "LOW", "MEDIUM", "HIGH") for g in gpus)
    # Unavailable everywhere: dataCenters omitted (RP2).
    assert all("dataCenters" not in g for g in gpus if g["availability"] == "NONE")
    r = requests.get(f"{base}/catalog/gpus", params={"include": "AVAILABILITY"}, headers=AUTH, timeout=10)
    assert r.status_code == 400 and r.json()["status"] == 400 and "product" in r.json()["detail"]
    assert requests.get(f"{base}/catalog/gpus", timeout=10).status_code == 401
    places = sum(len(g.get("dataCenters") or []) for g in gpus)
    assert sum(len(g.get("dataCenters") or []) for g in catalog(base, 8)) < places  # 8 at once: fewer


def test_create_shape_errors_and_stock(sandbox):
    base = sandbox.runpod_url
    gpu_id, dc = pick(base)
    fixture_created = fixture("runpod_v2_create_pod.json")
    sandbox.set_faults({"rules": [{"dialect": "runpod", "loading_s": [5, 5]}]})  # an image pull
    r = create(base, body(gpu_id, dc, "ssh-ed25519 AAAAC3Nza x"))
    assert r.status_code == 201, r.text
    pod = r.json()
    assert set(pod) == set(fixture_created["created"]["body"])
    assert pod["status"] == "PROVISIONING" and pod["ssh"]["direct"] is None and pod["cloud"] == "SECURE"
    assert pod["gpu"] == {"id": gpu_id, "count": 1} and pod["env"] == {
        "PUBLIC_KEY": "ssh-ed25519 AAAAC3Nza x"
    }
    # Unknown body fields: 422 naming the field.
    bad = create(base, body(gpu_id, dc, gpuTypeId="x"))
    assert bad.status_code == 422
    assert bad.json()["errors"] == fixture_created["validation_422"]["body"]["errors"]
    assert set(bad.json()) == set(fixture_created["validation_422"]["body"])
    # A data centre without the GPU: the capacity 400, detail only (dataCenterIds is enforced).
    other = next(d for d, _ in RUNPOD_DATA_CENTERS if d != dc)
    full = create(base, body(gpu_id, other, gpu={"id": gpu_id, "count": 8}))
    assert full.status_code == 400 and full.json() == fixture_created["no_capacity"]["body"]
    assert create(base, body("NVIDIA GeForce RTX 9999", dc)).status_code == 400
    assert requests.post(f"{base}/pods", json=body(gpu_id, dc), timeout=10).json() == {
        "title": "Unauthorized",
        "status": 401,
        "detail": "missing bearer token",
    }


def test_rental_key_in_public_key_reaches_root_through_start_sh(sandbox, tmp_path: Path):
    base = sandbox.runpod_url
    gpu_id, dc = pick(base)
    key, pub = make_key(tmp_path)
    env = {"PUBLIC_KEY": pub, "SHOPPER_ONSTART": "echo agent-ran > $HOME/agent.txt; sleep 600"}
    r = create(base, body(gpu_id, dc, env=env, args=ARGS))
    pod_id = r.json()["id"]
    pod = running(base, pod_id)
    direct = pod["ssh"]["direct"]
    assert direct["host"] == "127.0.0.1" and direct["username"] == "root"
    assert pod["runtime"]["ports"] == [
        {"private": 22, "public": direct["port"], "type": "tcp", "ip": "127.0.0.1"}
    ]
    assert pod["ssh"]["proxy"]["host"] == "ssh.runpod.io" and pod["startedAt"]
    out = wait_for(
        lambda: (o := ssh(direct["port"], key, "nvidia-smi -L; cat ~/agent.txt")).returncode == 0 and o
    )
    assert "GPU 0: NVIDIA" in out.stdout and "agent-ran" in out.stdout
    # The container's root paths landed in the machine's fs/, not on the host.
    assert not Path("/shopper-onstart.sh").exists()
    # The pod's command is still running /start.sh (exec'd): its processes carry the marker.
    assert marked_pids(sandbox, "runpod", pod_id)
    assert requests.delete(f"{base}/pods/{pod_id}", headers=AUTH, timeout=10).status_code == 204
    wait_for(lambda: not marked_pids(sandbox, "runpod", pod_id))
    assert get(base, pod_id).json() == fixture("runpod_v2_delete_pod.json")["not_found"]["body"]
    assert requests.delete(f"{base}/pods/{pod_id}", headers=AUTH, timeout=10).status_code == 404


def test_without_args_the_image_cmd_runs_and_a_command_skipping_start_sh_gets_no_ssh(sandbox, tmp_path: Path):
    base = sandbox.runpod_url
    gpu_id, dc = pick(base)
    key, pub = make_key(tmp_path)
    plain = running(base, create(base, body(gpu_id, dc, pub)).json()["id"])
    wait_for(lambda: ssh(plain["ssh"]["direct"]["port"], key, "true").returncode == 0)
    # args that replace CMD without running /start.sh: no sshd, so no key is ever accepted.
    broken = running(base, create(base, body(gpu_id, dc, pub, args="sleep 600")).json()["id"])
    assert ssh(broken["ssh"]["direct"]["port"], key, "true").returncode == 255


def test_startssh_injects_account_keys_only_without_public_key(sandbox):
    base = sandbox.runpod_url
    gpu_id, dc = pick(base)
    put = requests.put(
        f"{base}/account/ssh-keys", json={"keys": [{"publicKey": "ssh-ed25519 AAAA acct"}]}, headers=AUTH
    )
    assert put.status_code == 200
    injected = create(base, body(gpu_id, dc)).json()
    assert injected["env"]["PUBLIC_KEY"] == "ssh-ed25519 AAAA acct"
    ours = create(base, body(gpu_id, dc, "ssh-ed25519 BBBB ours")).json()
    assert ours["env"]["PUBLIC_KEY"] == "ssh-ed25519 BBBB ours"


def test_list_paging_rename_actions(sandbox):
    base = sandbox.runpod_url
    gpu_id, dc = pick(base)
    ids = [create(base, body(gpu_id, dc, name=f"shopper-{i}")).json()["id"] for i in range(3)]
    pods = requests.get(f"{base}/pods", headers=AUTH, timeout=10).json()
    assert list(pods) == ["pods"] and [p["id"] for p in pods["pods"]] == ids
    page = requests.get(f"{base}/pods", params={"limit": 2}, headers=AUTH, timeout=10).json()
    assert [p["id"] for p in page["pods"]] == ids[:2] and page["pagination"]["hasNextPage"] is True
    rest = requests.get(
        f"{base}/pods", params={"limit": 2, "cursor": page["pagination"]["nextCursor"]}, headers=AUTH
    ).json()
    assert [p["id"] for p in rest["pods"]] == ids[2:] and rest["pagination"]["hasNextPage"] is False
    renamed = requests.patch(f"{base}/pods/{ids[0]}", json={"name": "other"}, headers=AUTH, timeout=10)
    assert renamed.json()["name"] == "other"
    running(base, ids[1])
    stop = requests.post(f"{base}/pods/{ids[1]}/action", json={"action": "stop"}, headers=AUTH, timeout=10)
    assert stop.status_code == 200 and stop.json()["status"] == "EXITED" and stop.json()["cost"] == 0.0
    again = requests.post(f"{base}/pods/{ids[1]}/action", json={"action": "stop"}, headers=AUTH, timeout=10)
    assert (
        again.status_code == 409
        and again.json() == fixture("runpod_v2_delete_pod.json")["action_not_allowed"]["body"]
    )
    term = requests.post(f"{base}/pods/{ids[2]}/action", json={"action": "terminate"}, headers=AUTH)
    assert term.status_code == 204 and get(base, ids[2]).status_code == 404


def test_faults_capacity_no_public_ip_error_exit_and_start_ssh(sandbox, tmp_path: Path):
    base = sandbox.runpod_url
    gpu_id, dc = pick(base)
    sandbox.set_faults({"rules": [{"dialect": "runpod", "no_capacity": 1.0}]})
    r = create(base, body(gpu_id, dc))
    assert r.status_code == 400 and "no longer any instances available" in r.json()["detail"]
    assert any(g.get("dataCenters") for g in catalog(base))  # the catalog still lists stock
    sandbox.set_faults({"rules": [{"dialect": "runpod", "no_public_ip": 1.0}]})
    pod = running(base, create(base, body(gpu_id, dc)).json()["id"])
    assert pod["ssh"]["direct"] is None and pod["runtime"]["ports"][0]["ip"] is None
    sandbox.set_faults({"rules": [{"dialect": "runpod", "oci_fail": 1.0}]})
    bad = create(base, body(gpu_id, dc)).json()["id"]
    assert wait_for(lambda: get(base, bad).json()["status"] == "ERROR")
    sandbox.set_faults({"rules": [{"dialect": "runpod", "die_after_s": 0.3}]})
    dying = create(base, body(gpu_id, dc)).json()["id"]
    assert wait_for(lambda: get(base, dying).json()["status"] == "EXITED")
    sandbox.set_faults({"rules": [{"dialect": "runpod", "start_ssh_422": True}]})
    refused = create(base, body(gpu_id, dc))
    assert refused.status_code == 422 and "'startSsh' not allowed" in refused.json()["errors"][0]
    no_flag = body(gpu_id, dc)
    no_flag.pop("startSsh")
    assert create(base, no_flag).status_code == 201


def test_rate_limit_answers_problem_json_with_retry_after(sandbox):
    base = sandbox.runpod_url
    sandbox.set_faults({"rules": [{"dialect": "runpod", "op": "list", "rate_limit_burst": 1}]})
    r = requests.get(f"{base}/pods", headers=AUTH, timeout=10)
    assert r.status_code == 429 and r.headers["Retry-After"].isdigit()
    assert set(r.json()) == set(fixture("runpod_v2_create_pod.json")["rate_limited"]["body"])
    assert requests.get(f"{base}/pods", headers=AUTH, timeout=10).status_code == 200
