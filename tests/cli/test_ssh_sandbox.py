"""``gpu-shopper ssh``, ``cp`` and ``ssh-config`` against the sandbox cloud's real SSH endpoints.

The sandbox runs as a real process (inventory/sandbox/testing.py); one Vast-dialect machine is
created there with a generated key attached, and a rental pointing at its SSH endpoint is served
by the live app. The CLI then runs the real OpenSSH client, scp (SFTP) and rsync against it.
HOME and XDG_CONFIG_HOME are temporary (tests/cli/conftest.py) and every ssh option naming a
file is absolute, so nothing here reads or writes the real ~/.ssh.

The sandbox serves SFTP (asyncssh, chrooted to the machine's ``fs/``) and runs exec commands
with ``/root`` rewritten into the same ``fs/`` — so ``rsync --server`` runs there too, using
the host's rsync, and both the rsync and the scp path are tested for real.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import requests

from inventory.sandbox.testing import running_sandbox
from sessions import keys
from shopper import cli
from tests.factories import RentalFactory
from tests.sandbox._util import AUTH, cheapest_asks, vast_create, vast_get, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    """A running sandbox machine with a generated key attached: (port, public, private, fs dir)."""
    if not (shutil.which("ssh") and shutil.which("scp")):
        pytest.fail("the OpenSSH client (ssh, scp) is required: apt-get install openssh-client")
    workdir = tmp_path_factory.mktemp("cli-sandbox")
    with running_sandbox(workdir, boot_delay=0) as sb:
        base = sb.vastai_url
        r = vast_create(base, cheapest_asks(base, gpu_name={"eq": "H100 SXM"}, num_gpus={"eq": 2})[0])
        iid = r.json()["new_contract"]
        inst = wait_for(lambda: (i := vast_get(base, iid)) and i["actual_status"] == "running" and i)
        public, private = keys.keypair_generate("cli-test")
        attach = requests.post(f"{base}/api/v0/instances/{iid}/ssh/", json={"ssh_key": public}, headers=AUTH)
        assert attach.status_code == 200
        fs = next((workdir / "sandbox").glob(f"**/vastai-{iid}/fs"))
        yield {"port": inst["ssh_port"], "public": public, "private": private, "fs": fs}


@pytest.fixture
def run(capfd):
    """run(*argv) -> (exit code, stdout, stderr), at the file-descriptor level: ssh, scp and rsync
    write to the terminal directly."""

    def run(*argv: str):
        code = cli.main(list(argv))
        captured = capfd.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def rental(machine, user, monkeypatch):
    """The user's active rental on the sandbox machine, its generated key stored (not on disk)."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # only the session's key is offered
    return RentalFactory(
        consumer=user,
        running=True,
        ssh_host="127.0.0.1",
        ssh_port=machine["port"],
        ssh_user="root",
        private_key=machine["private"],
        ssh_public_key=machine["public"],
    )


def tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_folder(root: Path) -> Path:
    data = root / "data"
    (data / "nested" / "deeper").mkdir(parents=True)
    (data / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (data / "nested" / "notes with space.txt").write_text("héllo\n")
    (data / "nested" / "deeper" / "empty").write_bytes(b"")
    return data


def test_ssh_runs_a_command_with_the_sessions_key(shopper, run, rental, home):
    code, out, err = run("ssh", str(rental.pk)[:8], "--", "nvidia-smi")
    assert code == 0, err
    assert out.count("NVIDIA H100 80GB HBM3") == 2 and "CUDA Version" in out
    # the key was not on this machine: downloaded from the shopper, 0600, where the command says
    key = home / ".ssh" / f"shopper-{str(rental.pk)[:8]}.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and "Private key downloaded" in err
    # the host key is remembered under the session's name, not the (reused) address
    known = Path(os.environ["XDG_CONFIG_HOME"]) / "gpu-shopper" / "known_hosts"
    alias = f"shopper-{str(rental.pk)[:8]}"
    found = subprocess.run(["ssh-keygen", "-F", alias, "-f", str(known)], capture_output=True, text=True)
    assert found.returncode == 0 and "ssh-ed25519" in found.stdout
    # the remote command's exit code is the CLI's; arguments reach the remote shell
    assert run("ssh", str(rental.pk), "--", "exit", "7")[0] == 7
    assert run("ssh", str(rental.pk), "echo", "$((40+2))")[:2] == (0, "42\n")


def test_ssh_to_an_ended_session_says_so(shopper, run, user):
    ended = RentalFactory(consumer=user, status="destroyed", ssh_host="127.0.0.1", ssh_port=1)
    code, _, err = run("ssh", str(ended.pk), "--", "true")
    assert code == 1 and "has ended (destroyed)" in err
    booting = RentalFactory(consumer=user, status="booting")
    code, _, err = run("ssh", str(booting.pk))
    assert code == 1 and "no SSH address yet" in err


@pytest.mark.parametrize("via", ["scp", "rsync", "auto"])
def test_cp_copies_a_folder_both_ways(shopper, run, rental, machine, tmp_path, via):
    data = make_folder(tmp_path / "local")
    remote_dir = f"/root/cp-{via}"
    short = str(rental.pk)[:8]
    assert run("ssh", short, "--", "mkdir", "-p", remote_dir)[0] == 0
    code, _, err = run("cp", "--via", via, str(data), f"{short}:{remote_dir}/")
    assert code == 0, err
    assert f"Copying with {'rsync' if via == 'auto' else via}." in err  # the host has rsync: auto picks it
    # the bytes are on the machine (its /root is the sandbox's fs/root), never in this host's /root
    on_machine = machine["fs"] / "root" / f"cp-{via}" / "data"
    assert tree(on_machine) == tree(data)
    assert not Path(remote_dir).exists()

    back = tmp_path / "back"
    back.mkdir()
    code, _, err = run("cp", "--via", via, f"shopper-{short}:{remote_dir}/data", str(back))
    assert code == 0, err
    assert tree(back / "data") == tree(data) and len(tree(data)) == 3


def test_rsync_resumes_a_partial_upload(shopper, run, rental, machine, tmp_path):
    """rsync keeps the partial file (--partial) and a re-run completes it with the right bytes."""
    data = make_folder(tmp_path / "local")
    target = machine["fs"] / "root" / "resume" / "data"
    target.mkdir(parents=True)
    weights = (data / "weights.bin").read_bytes()
    (target / "weights.bin").write_bytes(weights[: len(weights) // 2])  # an interrupted copy
    code, _, err = run("cp", "--via", "rsync", str(data), f"{str(rental.pk)[:8]}:/root/resume")
    assert code == 0, err
    assert tree(target) == tree(data)


def test_ssh_config_then_plain_ssh_then_remove(shopper, run, rental, home, user):
    config = home / ".ssh" / "config"
    config.parent.mkdir(mode=0o700)
    mine = "# my own settings\nHost *\n    User bob\n    ServerAliveInterval 5\n"
    config.write_text(mine)
    config.chmod(0o644)
    RentalFactory(consumer=user, status="destroyed", ssh_host="127.0.0.1", ssh_port=2)  # not written
    code, out, err = run("ssh-config")
    assert code == 0, err
    alias = f"shopper-{str(rental.pk)[:8]}"
    assert out.splitlines() == [f"Wrote 1 host to {config}:", f"  ssh {alias}"]
    text = config.read_text()
    assert text.endswith(mine) and text.count("Host shopper-") == 1
    assert stat.S_IMODE(config.stat().st_mode) == 0o644  # the file's mode is kept

    # plain OpenSSH with only that file: our block wins over the later `Host *` (User bob)
    done = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", alias, "echo", "$USER"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "root\n"

    # run again: the block is replaced, not repeated
    assert run("ssh-config")[0] == 0
    assert config.read_text() == text
    code, out, _ = run("ssh-config", "--remove")
    assert code == 0 and "Removed" in out
    assert config.read_text() == mine


def test_ssh_config_writes_absolute_paths_and_needs_no_key_for_own_keys(shopper, run, user, home):
    RentalFactory(consumer=user, running=True, ssh_host="203.0.113.9", ssh_port=41000, ssh_user="user")
    target = home / "cfg"
    assert run("ssh-config", "--file", str(target))[0] == 0
    text = target.read_text()
    assert "HostName 203.0.113.9" in text and "Port 41000" in text and "User user" in text
    assert "IdentityFile" not in text  # the user's own keys: nothing to name
    assert f'UserKnownHostsFile "{os.environ["XDG_CONFIG_HOME"]}/gpu-shopper/known_hosts"' in text
    assert text.rstrip().endswith("Host *\n# <<< gpu-shopper <<<")
