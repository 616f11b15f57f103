"""Node faults of the sandbox (FIELD_NOTES "What the sandbox should reproduce" 1, 2, 9, 12, 18, 20),
seen from outside as a client sees them: over real SSH and the provider APIs."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import requests

from inventory.providers.tensordock.adapter import DRIVER_REPAIR
from inventory.sandbox.faults import FaultConfigError, Faults

from ._util import (
    AUTH,
    make_key,
    ssh,
    td_body,
    td_create,
    td_key_runcmd,
    td_pick,
    td_ssh_port,
    vast_create,
    vast_get,
    vast_search,
    wait_for,
)

SMI_FAILED = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
QUERY = "nvidia-smi --query-gpu=name,driver_version --format=csv,noheader"


def _td_machine(sandbox, tmp_path: Path, runcmd_extra: list[str] | None = None) -> tuple[str, int, Path]:
    base = sandbox.tensordock_url
    location_id, v0 = td_pick(base)
    key, pub = make_key(tmp_path)
    cloud_init = td_key_runcmd(pub)
    cloud_init["runcmd"] += runcmd_extra or []
    r = td_create(base, td_body(location_id, v0, ssh_key=pub, cloud_init=cloud_init))
    assert r.status_code == 201, r.text
    iid = r.json()["data"]["id"]
    detail = wait_for(
        lambda: (
            (d := requests.get(f"{base}/instances/{iid}", headers=AUTH).json())["status"] == "running" and d
        )
    )
    port = td_ssh_port(detail)
    wait_for(lambda: ssh(port, key, "true").returncode == 0)  # runcmd wrote the key
    return iid, port, key


def test_no_driver_until_the_boot_repair_ran_then_a_newer_driver(sandbox, tmp_path):
    sandbox.set_faults([{"dialect": "tensordock", "node_fault": "no_driver", "repair_s": 1}])
    _, port, key = _td_machine(sandbox, tmp_path)

    out = ssh(port, key, "nvidia-smi")
    assert out.returncode == 9 and out.stdout.startswith(SMI_FAILED)
    assert "iU  nvidia-dkms-550" in ssh(port, key, "dpkg -l 'nvidia*'").stdout
    assert ssh(port, key, "lsmod | grep nvidia").returncode == 1
    # Installing before `dpkg --configure -a` fails, as apt does with half-installed packages.
    out = ssh(port, key, "apt-get install -y nvidia-driver-550")
    assert out.returncode == 100 and "dpkg --configure -a" in out.stderr

    # The product's cloud-init repair (inventory/providers/tensordock/adapter.py) fixes it after repair_s.
    repair = ssh(port, key, f"bash -c {shlex.quote(DRIVER_REPAIR)} >/dev/null 2>&1; echo done")
    assert repair.stdout.strip() == "done"
    out = wait_for(lambda: (o := ssh(port, key, QUERY)).returncode == 0 and o, timeout=10)
    assert out.stdout.strip().endswith(", 580.126.09")  # re-read after the repair: the driver moved
    assert "CUDA Version: 13.0" in ssh(port, key, "nvidia-smi").stdout
    assert "ii  nvidia-dkms-580" in ssh(port, key, "dpkg -l").stdout


def test_absent_driver_is_command_not_found_and_repair_fails_keeps_it_broken(sandbox, tmp_path):
    sandbox.set_faults([{"dialect": "tensordock", "node_fault": "absent", "repair_fails": True}])
    _, port, key = _td_machine(sandbox, tmp_path)
    out = ssh(port, key, "nvidia-smi -L")
    assert out.returncode == 127 and "nvidia-smi: command not found" in out.stderr
    ssh(port, key, f"bash -c {shlex.quote(DRIVER_REPAIR)} >/dev/null 2>&1")
    # repair_s is 0: a repair that worked would show at once
    assert ssh(port, key, "nvidia-smi -L").returncode == 127


def test_dpkg_lock_holds_apt_until_unattended_upgrades_is_stopped(sandbox, tmp_path):
    sandbox.set_faults([{"dialect": "tensordock", "dpkg_lock_s": 300}])
    _, port, key = _td_machine(sandbox, tmp_path)
    out = ssh(port, key, "apt-get update")
    assert out.returncode == 100
    assert "Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 1234" in out.stderr
    assert ssh(port, key, "fuser /var/lib/dpkg/lock-frontend").returncode == 0
    ssh(port, key, "systemctl stop unattended-upgrades")
    assert ssh(port, key, "fuser /var/lib/dpkg/lock-frontend").returncode == 1
    assert ssh(port, key, "apt-get update").returncode == 0
    assert ssh(port, key, "nvidia-smi -L").returncode == 0  # the driver itself was fine


def test_cuda_lie_on_a_vast_host(sandbox, tmp_path):
    sandbox.set_faults([{"dialect": "vastai", "cuda_lie": True}])
    base = sandbox.vastai_url
    [offer] = vast_search(base, {"cuda_max_good": {"gte": 12.9}, "limit": 1, "order": [["dph_total", "asc"]]})
    assert offer["cuda_max_good"] >= 12.9
    key, pub = make_key(tmp_path)
    iid = vast_create(base, offer["id"]).json()["new_contract"]
    requests.post(f"{base}/api/v0/instances/{iid}/ssh/", json={"ssh_key": pub}, headers=AUTH, timeout=10)
    port = wait_for(lambda: (i := vast_get(base, iid)) and i["actual_status"] == "running" and i["ssh_port"])
    out = wait_for(lambda: (o := ssh(port, key, "nvidia-smi")).returncode == 0 and o)
    assert "Driver Version: 570.124.04" in out.stdout and "CUDA Version: 12.8" in out.stdout


def test_die_after_start_stops_the_machine_and_it_stays_listed(sandbox, tmp_path):
    sandbox.set_faults([{"dialect": "tensordock", "die_after_s": 2}])
    iid, port, key = _td_machine(sandbox, tmp_path)
    base = sandbox.tensordock_url
    wait_for(lambda: requests.get(f"{base}/instances/{iid}", headers=AUTH).json()["status"] == "Stopped")
    assert ssh(port, key, "true").returncode == 255
    listed = requests.get(f"{base}/instances", headers=AUTH).json()["data"]["instances"]
    assert [i["id"] for i in listed] == [iid]


def test_key_delay_refuses_every_key_until_the_delay_passed(sandbox, tmp_path):
    sandbox.set_faults([{"dialect": "vastai", "key_delay_s": 3}])
    base = sandbox.vastai_url
    [offer] = vast_search(base, {"limit": 1, "order": [["dph_total", "asc"]]})
    key, pub = make_key(tmp_path)
    iid = vast_create(base, offer["id"]).json()["new_contract"]
    requests.post(f"{base}/api/v0/instances/{iid}/ssh/", json={"ssh_key": pub}, headers=AUTH, timeout=10)
    port = wait_for(lambda: (i := vast_get(base, iid)) and i["actual_status"] == "running" and i["ssh_port"])
    out = ssh(port, key, "true")
    assert out.returncode == 255 and "Permission denied" in out.stderr
    wait_for(lambda: ssh(port, key, "true").returncode == 0, timeout=10)


def test_the_create_ssh_key_of_tensordock_is_never_installed(sandbox, tmp_path):
    base = sandbox.tensordock_url
    location_id, v0 = td_pick(base)
    key, pub = make_key(tmp_path)
    # An empty cloud-init: td_body would otherwise deliver the key the way clients must.
    body = td_body(location_id, v0, ssh_key=pub, cloud_init={"runcmd": []})
    iid = td_create(base, body).json()["data"]["id"]
    detail = wait_for(
        lambda: (
            (d := requests.get(f"{base}/instances/{iid}", headers=AUTH).json())["status"] == "running" and d
        )
    )
    port = td_ssh_port(detail)
    assert ssh(port, key, "true").returncode == 255
    assert ssh(port, key, "true", user="user").returncode == 255


def test_node_fault_rules_are_drawn_per_instance_and_validated():
    faults = Faults({"seed": 3, "rules": [{"node_fault": "no_driver", "p": 0.5, "repair_s": [60, 150]}]})
    drawn = [faults.node("tensordock", "NVIDIA L4") for _ in range(40)]
    broken = [d for d in drawn if d]
    assert 8 < len(broken) < 32
    assert all(d["node_fault"] == "no_driver" and 60 <= d["repair_s"] <= 150 for d in broken)
    gpu_only = Faults([{"node_fault": "absent", "gpu": "h100"}])
    assert gpu_only.node("vastai", "NVIDIA H100 80GB HBM3") == {"node_fault": "absent"}
    assert gpu_only.node("vastai", "NVIDIA L4") == {}
    for bad in ({"node_fault": "melted"}, {"cuda_lie": "yes"}, {"node_faults": "no_driver"}):
        with pytest.raises(FaultConfigError):
            Faults([bad])


def test_direct_blocked_vast_port_never_answers_while_the_proxy_works(sandbox, tmp_path):
    import socket

    sandbox.set_faults([{"dialect": "vastai", "direct_blocked": True}])
    base = sandbox.vastai_url
    [offer] = vast_search(base, {"limit": 1, "order": [["dph_total", "asc"]]})
    key, pub = make_key(tmp_path)
    iid = vast_create(base, offer["id"]).json()["new_contract"]
    requests.post(f"{base}/api/v0/instances/{iid}/ssh/", json={"ssh_key": pub}, headers=AUTH, timeout=10)
    inst = wait_for(lambda: (i := vast_get(base, iid)) and i["actual_status"] == "running" and i)
    direct = int(inst["ports"]["22/tcp"][0]["HostPort"])
    assert direct != inst["ssh_port"]
    with socket.create_connection(("127.0.0.1", direct), timeout=2) as sock:
        sock.settimeout(1)
        with pytest.raises(TimeoutError):
            sock.recv(64)  # no SSH banner, ever
    assert ssh(inst["ssh_port"], key, "true").returncode == 0
