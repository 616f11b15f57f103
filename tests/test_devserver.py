"""`make run` (tools/devserver.py): the development .env, "running" only once the web server
answers, and a shutdown that a second Ctrl-C or SIGTERM cannot cut short."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tools import devserver

ROOT = Path(__file__).resolve().parent.parent


# --- .env ---------------------------------------------------------------------------------
def test_write_dotenv_writes_a_private_development_file_once(tmp_path):
    assert devserver.write_dotenv(tmp_path) is True
    path = tmp_path / ".env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = devserver.read_dotenv(path)
    assert values["DEBUG"] == "True" and len(values["SECRET_KEY"]) >= 50
    Fernet(values["SHOPPER_FERNET_KEYS"])  # a valid key
    text = path.read_text()
    # never overwritten, also not by a second run
    assert devserver.write_dotenv(tmp_path) is False and path.read_text() == text
    other = tmp_path / "other"
    other.mkdir()
    (other / ".env").write_text("DEBUG=False\n")
    assert devserver.write_dotenv(other) is False and (other / ".env").read_text() == "DEBUG=False\n"


def test_write_dotenv_keeps_the_fernet_key_of_an_earlier_make_run(tmp_path):
    """Keys of generated SSH keys were encrypted with .run/fernet.key before .env existed."""
    key = Fernet.generate_key().decode()
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run" / "fernet.key").write_text(key + "\n")
    devserver.write_dotenv(tmp_path)
    assert devserver.read_dotenv(tmp_path / ".env")["SHOPPER_FERNET_KEYS"] == key


# --- shutdown -------------------------------------------------------------------------------
STUBBORN = """
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a busy process that does not stop when asked
signal.signal(signal.SIGINT, signal.SIG_IGN)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
if os.fork() == 0:                               # and a forked child, like qcluster's workers
    time.sleep(600)
print("ready", flush=True)
time.sleep(600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie waiting for its (new) parent to reap it has stopped


def gone(pids: set[int], timeout: float = 10) -> bool:
    """Whether every pid has stopped, allowing the kernel a moment to deliver a SIGKILL."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def children_of(pid: int) -> set[int]:
    """Every descendant of ``pid`` now (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_during_shutdown_kills_what_is_left_instead_of_abandoning_it(second):
    """The old shutdown waited for each process with `proc.wait(15)`; a second Ctrl-C raised
    KeyboardInterrupt out of that wait and make run exited, leaving every process that had not
    stopped yet (here: one holding a port, like the sandbox, and a forked child)."""
    port = free_port()
    stubborn = subprocess.Popen(
        [sys.executable, "-c", STUBBORN, str(port)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        assert stubborn.stdout.readline() == "ready\n"
        forked = children_of(stubborn.pid)
        assert len(forked) == 1 and port_taken(port)
        second_ctrl_c = threading.Timer(1.0, os.kill, (os.getpid(), second))
        second_ctrl_c.start()
        started = time.monotonic()
        devserver.stop_all([("sandbox", stubborn), ("web", polite)], grace=60)
        took = time.monotonic() - started
        second_ctrl_c.join()
        assert 0.9 < took < 10  # waited until the second signal, not the whole grace period
        assert stubborn.returncode == -signal.SIGKILL and polite.returncode == -signal.SIGTERM
        assert gone(forked)
        assert not port_taken(port)
    finally:
        for proc in (stubborn, polite):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    # the handlers are given back: Ctrl-C is pytest's again
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- make run from a fresh checkout, for real ---------------------------------------------------
@pytest.fixture
def checkout(tmp_path):
    """A copy of the tracked files, as a fresh clone would be (no .env, no database)."""
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    dest = tmp_path / "checkout"
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    """What a new shell has: no DEBUG, SECRET_KEY, SHOPPER_* or provider keys."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", **extra}


@pytest.mark.e2e
def test_make_run_then_manage_py_in_another_shell_then_ctrl_c_twice(checkout):
    web_port, sandbox_port = free_port(), free_port()
    env = clean_env(PORT=str(web_port), SANDBOX_PORT=str(sandbox_port), WEB_WORKERS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.devserver"],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "make run exited:\n" + "".join(lines[-40:])
            lines.append(line)
            if "is running" in line:
                break
        else:
            pytest.fail("make run did not say it is running:\n" + "".join(lines[-40:]))
        # "running" means the web server answers now, not a moment later
        assert port_taken(web_port) and port_taken(sandbox_port)
        assert (checkout / ".env").is_file() and any("Wrote" in line and ".env" in line for line in lines)
        started = children_of(proc.pid)
        assert len(started) >= 4  # sandbox, web, worker, safety loop (and their children)
        # The sandbox speaks all four providers' dialects, and make run turns each one on.
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/api/v1/health", timeout=30) as resp:
            health = json.load(resp)
        enabled = {p["name"]: p["enabled"] for p in health["providers"]}
        assert enabled == {"vastai": True, "tensordock": True, "runpod": True, "lambda": True}, health
        assert all(p["offers"] for p in health["providers"]), health

        # another shell, nothing set: manage.py reads the .env make run wrote
        token = subprocess.run(
            [sys.executable, "manage.py", "create_token", "admin"],
            cwd=checkout,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert token.returncode == 0, token.stderr
        assert token.stdout.strip().startswith("gs_")

        proc.send_signal(signal.SIGINT)
        while "Stopping" not in (line := proc.stdout.readline()):
            assert line, "".join(lines[-40:])
        proc.send_signal(signal.SIGINT)  # impatient: a second Ctrl-C while it stops
        rest, _ = proc.communicate(timeout=60)
        assert "Stopping now" in rest
        assert gone(started), [pid for pid in started if alive(pid)]
        assert not port_taken(web_port) and not port_taken(sandbox_port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children_of(proc.pid) if proc.poll() is None else set():
            os.kill(pid, signal.SIGKILL)
