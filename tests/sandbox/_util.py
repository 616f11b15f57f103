"""Helpers for the sandbox-cloud tests: SSH keys, an OpenSSH client call, bounded polling."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import requests

AUTH = {"Authorization": "Bearer test-key"}
# Each provider keeps its recorded bodies in its own folder: inventory/providers/<folder>/fixtures/.
PROVIDERS_DIR = Path(__file__).resolve().parents[2] / "inventory" / "providers"
FIXTURE_DIRS = tuple(sorted(PROVIDERS_DIR.glob("*/fixtures")))


def fixture(name: str) -> Any:
    for d in FIXTURE_DIRS:
        if (d / name).exists():
            return json.loads((d / name).read_text())
    pytest.fail(f"fixture {name} is missing from inventory/providers/*/fixtures/")


def make_key(tmp_path: Path, name: str = "id_ed25519") -> tuple[Path, str]:
    """A fresh ed25519 key pair on disk; returns (private key path, public key line)."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{name}@tests")
    path = tmp_path / name
    key.write_private_key(str(path))
    path.chmod(0o600)
    return path, key.export_public_key().decode().strip()


def ssh(
    port: int,
    key: Path,
    command: str | None,
    *,
    user: str = "root",
    tty: bool = False,
    stdin: str | None = None,
):
    """Run the real OpenSSH client against the sandbox."""
    if not shutil.which("ssh"):
        pytest.fail("the OpenSSH client (ssh) is required: apt-get install openssh-client")
    argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port)]
    for opt in (
        "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "BatchMode=yes",
        "IdentitiesOnly=yes", "LogLevel=ERROR", "ConnectTimeout=5", "PasswordAuthentication=no",
    ):  # fmt: skip
        argv += ["-o", opt]
    if tty:
        argv.append("-tt")
    argv.append(f"{user}@127.0.0.1")
    if command is not None:
        argv.append(command)
    return subprocess.run(
        argv,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
    )


def scp(port: int, key: Path, local: Path, remote: str, *, user: str = "root") -> subprocess.CompletedProcess:
    """Copy a file up with the real scp client (SFTP protocol, the OpenSSH 9 default)."""
    if not shutil.which("scp"):
        pytest.fail("the OpenSSH client (scp) is required: apt-get install openssh-client")
    argv = ["scp", "-F", "/dev/null", "-i", str(key), "-P", str(port), "-o", "StrictHostKeyChecking=no"]
    argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
    return subprocess.run(
        [*argv, str(local), f"{user}@127.0.0.1:{remote}"], capture_output=True, text=True, timeout=20
    )


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy (bounded); returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


# -- Vast ---------------------------------------------------------------------------------------
def vast_search(base: str, query: dict, **kw) -> list[dict]:
    r = requests.post(f"{base}/api/v0/bundles/", json=query, timeout=10, **kw)
    r.raise_for_status()
    return r.json()["offers"]


def vast_create(base: str, ask_id: int, **body) -> requests.Response:
    payload = {
        "client_id": "me",
        "image": "vastai/pytorch:2.5.1-cuda-12.4.1-py311",
        "disk": 40,
        "label": "shopper-test",
        "env": {"-p 8080:8080": "1"},
        "runtype": "ssh_direc ssh_proxy",
        "onstart": "",
        "price": None,
        "cancel_unavail": True,
        "target_state": "running",
    }
    payload.update(body)
    return requests.put(f"{base}/api/v0/asks/{ask_id}/", json=payload, headers=AUTH, timeout=10)


def vast_get(base: str, instance_id: int) -> dict | None:
    r = requests.get(
        f"{base}/api/v0/instances/{instance_id}/", params={"owner": "me"}, headers=AUTH, timeout=10
    )
    r.raise_for_status()
    return r.json()["instances"]


def cheapest_asks(base: str, n: int = 1, **filters) -> list[int]:
    query = {"order": [["dph_total", "asc"]], "limit": n, **filters}
    return [o["id"] for o in vast_search(base, query)]


# -- TensorDock --------------------------------------------------------------------------------
def td_pick(base: str, min_count: int = 1, dedicated: bool = True) -> tuple[str, str]:
    """(location_id, v0Name) of a GPU entry with at least ``min_count`` in stock."""
    locations = requests.get(f"{base}/locations", timeout=10).json()["data"]["locations"]
    for loc in locations:
        for g in loc["gpus"]:
            if g["max_count"] >= min_count and g["network_features"]["dedicated_ip_available"] == dedicated:
                return loc["id"], g["v0Name"]
    raise AssertionError("no TensorDock stock")


def td_body(location_id: str, v0: str, *, count: int = 1, name: str = "shopper-td", **attrs) -> dict:
    attributes = {
        "name": name,
        "type": "virtualmachine",
        "image": "ubuntu2204",
        "resources": {"vcpu_count": 8, "ram_gb": 32, "storage_gb": 100, "gpus": {v0: {"count": count}}},
        "location_id": location_id,
        "useDedicatedIp": True,
    }
    if attrs.get("ssh_key") and "cloud_init" not in attrs:
        # The create's ssh_key is never installed (TD-SSHKEY-LATE): deliver it as clients must.
        key = attrs["ssh_key"]
        attributes["cloud_init"] = {
            "runcmd": [
                f"mkdir -p /root/.ssh && echo '{key}' >> /root/.ssh/authorized_keys",
                f"mkdir -p /home/user/.ssh && echo '{key}' >> /home/user/.ssh/authorized_keys",
            ]
        }
    attributes.update(attrs)
    return {"data": {"type": "virtualmachine", "attributes": attributes}}


def td_key_runcmd(public_key: str) -> dict:
    """cloud_init writing ``public_key`` for root and user: the only way a key reaches a
    TensorDock machine (the create's ssh_key is never installed, FIELD_NOTES TD-SSHKEY-LATE)."""
    return {
        "runcmd": [
            f"mkdir -p /root/.ssh && echo '{public_key}' >> /root/.ssh/authorized_keys",
            f"mkdir -p /home/user/.ssh && echo '{public_key}' >> /home/user/.ssh/authorized_keys",
        ]
    }


def td_create(base: str, body: dict) -> requests.Response:
    return requests.post(f"{base}/instances", json=body, headers=AUTH, timeout=10)


def td_ssh_port(detail: dict) -> int:
    return next(f["external_port"] for f in detail["portForwards"] if f["internal_port"] == 22)


def marked_pids(sb, dialect: str, instance_id: object) -> list[int]:
    """Live processes sandbox ``sb`` started for an instance (they carry SANDBOX_INSTANCE)."""
    from inventory.sandbox.node import instance_marker

    value = instance_marker(sb.state_file.parent / "instances", dialect, instance_id)
    marker = f"\0SANDBOX_INSTANCE={value}\0".encode()
    pids = []
    for name in Path("/proc").iterdir():
        if not name.name.isdigit():
            continue
        try:
            environ = (name / "environ").read_bytes()
            state = (name / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if state != "Z" and marker in b"\0" + environ + b"\0":
            pids.append(int(name.name))
    return pids
