"""The TensorDock v2 dialect against a real sandbox process."""

from __future__ import annotations

from pathlib import Path

import requests

from ._util import (
    AUTH,
    fixture,
    make_key,
    marked_pids,
    port_open,
    scp,
    ssh,
    td_body,
    td_create,
    td_key_runcmd,
    td_pick,
    td_ssh_port,
    wait_for,
)


def _stock(base: str, location_id: str, v0: str) -> int:
    locations = requests.get(f"{base}/locations", timeout=10).json()["data"]["locations"]
    loc = next(x for x in locations if x["id"] == location_id)
    return next(g["max_count"] for g in loc["gpus"] if g["v0Name"] == v0)


def test_offers_endpoints(sandbox):
    base = sandbox.tensordock_url
    body = requests.get(f"{base}/locations").json()
    assert len(body["data"]["locations"]) >= 50
    nodes = requests.get(f"{base}/hostnodes").json()["data"]["hostnodes"]
    sample = fixture("tensordock_v2_hostnodes.json")["data"]["hostnodes"][0]
    # has_public_ip_available: a field third-party clients read (FIELD_NOTES TD-NOPUBLICIP, TF).
    assert set(nodes[0]) == set(sample) and set(nodes[0]["available_resources"]) == set(
        sample["available_resources"]
    ) | {"has_public_ip_available"}
    assert requests.get(f"{base}/locations", headers={"Authorization": "Bearer invalid"}).status_code == 401


def test_create_validation_and_capacity(sandbox):
    base = sandbox.tensordock_url
    location_id, v0 = td_pick(base)
    no_key = td_create(base, td_body(location_id, v0))
    assert no_key.status_code == 400 and isinstance(no_key.json(), list)
    assert no_key.json()[0]["path"] == ["data", "attributes", "ssh_key"] and "message" in no_key.json()[0]
    small = td_create(base, td_body(location_id, v0, ssh_key="ssh-ed25519 AAAA x", resources={
        "vcpu_count": 2, "ram_gb": 8, "storage_gb": 50, "gpus": {v0: {"count": 1}}}))  # fmt: skip
    assert small.status_code == 400 and small.json()[0]["path"][-1] == "storage_gb"
    stock = _stock(base, location_id, v0)
    too_many = td_create(base, td_body(location_id, v0, count=stock + 1, ssh_key="ssh-ed25519 AAAA x"))
    assert too_many.status_code == 200 and too_many.json() == {
        "status": 400,
        "error": "No available nodes found",
    }
    assert requests.post(f"{base}/instances", json=td_body(location_id, v0)).status_code == 401


def test_lifecycle_keys_runcmd_destroy(sandbox, tmp_path: Path):
    base = sandbox.tensordock_url
    location_id, v0 = td_pick(base, min_count=2)
    stock = _stock(base, location_id, v0)
    key, pub = make_key(tmp_path)
    runcmd_key, runcmd_pub = make_key(tmp_path, "runcmd")
    never, _ = make_key(tmp_path, "never")
    runcmd = [
        "mkdir -p /root/.ssh && chmod 700 /root/.ssh",
        f"echo '{runcmd_pub}' >> /root/.ssh/authorized_keys",
        f"mkdir -p /home/user/.ssh && echo '{runcmd_pub}' >> /home/user/.ssh/authorized_keys"
        " && chown -R user:user /home/user/.ssh",
        ["sh", "-c", "echo runcmd-ran > /root/marker.txt; sleep 600"],
    ]
    r = td_create(base, td_body(location_id, v0, count=2, ssh_key=pub, cloud_init={"runcmd": runcmd}))
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert data["type"] == "virtualmachine" and data["name"] == "shopper-td"
    iid = data["id"]
    assert _stock(base, location_id, v0) == stock - 2

    detail = wait_for(
        lambda: (
            (d := requests.get(f"{base}/instances/{iid}", headers=AUTH).json())["status"] == "running" and d
        )
    )
    assert "data" not in detail and detail["type"] == "virtualmachine" and detail["ipAddress"] == "127.0.0.1"
    assert set(detail) == set(fixture("tensordock_v2_instance_detail.json")["documented_flat"]["body"])
    assert detail["resources"]["gpus"] == {v0: {"count": 2, "v0Name": v0}} and detail["rateHourly"] > 0
    port = td_ssh_port(detail)

    # the key cloud-init echoed into authorized_keys works once runcmd ran, for both users
    wait_for(lambda: ssh(port, runcmd_key, "cat /root/marker.txt").stdout.strip() == "runcmd-ran")
    for user in ("root", "user"):
        out = ssh(port, runcmd_key, "nvidia-smi -L | wc -l; whoami", user=user)
        assert out.returncode == 0 and out.stdout.split() == ["2", user], out.stderr
    # the create's ssh_key is required but never installed (FIELD_NOTES TD-SSHKEY-LATE)
    assert ssh(port, key, "true").returncode == 255
    assert ssh(port, never, "true").returncode == 255
    (tmp_path / "agent.sh").write_text("echo agent-ok\n")
    assert scp(port, runcmd_key, tmp_path / "agent.sh", "/root/agent.sh").returncode == 0
    assert ssh(port, runcmd_key, "sh /root/agent.sh").stdout == "agent-ok\n"
    assert ssh(port, runcmd_key, "true", user="admin").returncode == 255

    listing = requests.get(f"{base}/instances", headers=AUTH).json()
    assert listing["data"]["instances"][0]["id"] == iid
    assert listing["data"]["instances"][0]["attributes"]["name"] == "shopper-td"
    assert listing["data"]["instances"][0]["type"] == "virtualmachine"

    d = requests.delete(f"{base}/instances/{iid}", headers=AUTH)
    assert d.json() == {
        "data": {"type": "success", "attributes": {"message": "Instance deleted successfully"}}
    }
    assert requests.get(f"{base}/instances/{iid}", headers=AUTH).status_code == 404
    assert requests.delete(f"{base}/instances/{iid}", headers=AUTH).status_code == 404
    assert not port_open(port)
    wait_for(lambda: not marked_pids(sandbox, "tensordock", iid), timeout=5)
    assert requests.get(f"{base}/instances", headers=AUTH).json() == {"data": {"instances": []}}
    assert _stock(base, location_id, v0) == stock


def test_poweroff_keeps_it_listed_as_stopped(sandbox, tmp_path: Path):
    base = sandbox.tensordock_url
    location_id, v0 = td_pick(base)
    key, pub = make_key(tmp_path)
    iid = td_create(base, td_body(location_id, v0, ssh_key=pub, cloud_init=td_key_runcmd(pub))).json()[
        "data"
    ]["id"]
    detail = wait_for(
        lambda: (
            (d := requests.get(f"{base}/instances/{iid}", headers=AUTH).json())["status"] == "running" and d
        )
    )
    port = td_ssh_port(detail)
    ssh(port, key, "sudo shutdown -h now", user="user")
    wait_for(lambda: requests.get(f"{base}/instances/{iid}", headers=AUTH).json()["status"] == "Stopped")
    assert not port_open(port)
    listing = requests.get(f"{base}/instances", headers=AUTH).json()["data"]["instances"]
    assert [(i["id"], i["attributes"]["status"]) for i in listing] == [(iid, "Stopped")]
