"""``shopper.serve``: how the web processes share the port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shopper.serve import listening_sockets


def test_each_worker_gets_its_own_socket_on_one_port():
    sockets = listening_sockets("127.0.0.1", 0, 1)  # port 0: any free port, then reuse it
    port = sockets[0].getsockname()[1]
    for s in sockets:
        s.close()
    sockets = listening_sockets("127.0.0.1", port, 3)
    try:
        assert len({s.fileno() for s in sockets}) == 3
        assert {s.getsockname()[1] for s in sockets} == {port}
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.close()
    finally:
        for s in sockets:
            s.close()


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_port_someone_listens_on_is_refused_not_shared(reuse_port):
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # e.g. a stale shopper.serve still running
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        with pytest.raises(OSError):
            listening_sockets("127.0.0.1", other.getsockname()[1], 2)
    finally:
        other.close()


# --- Exit codes: a restart-on-failure policy must see a dead child as a failure -------------
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc, no psutil needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which is in parentheses and may hold spaces).
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


@pytest.fixture
def served(tmp_path):
    """A real ``shopper.serve`` with two Daphne children, answering on its port."""
    port = _free_port()
    env = dict(os.environ)
    env.update(
        DEBUG="False", SHOPPER_TESTING="True", SECRET_KEY="serve-test-secret-key-0123456789abcdef",
        DATABASE_URL=f"sqlite:///{tmp_path / 'serve.sqlite3'}", CHANNEL_LAYER="memory",
        SHOPPER_FERNET_KEYS="8n7cyPbD0kqf9cJ0kQk3yqXKkXy7Gxh0o6lZ0xg3G2s=", LOG_LEVEL="WARNING",
    )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "shopper.serve", "--port", str(port), "--workers", "2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(_children(proc.pid)) < 2 or not _answers(port):
            assert proc.poll() is None, "shopper.serve exited during start-up"
            assert time.monotonic() < deadline, "shopper.serve did not start within 30 s"
            time.sleep(0.2)
        yield proc
    finally:  # also when start-up failed: never leave a server behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _answers(port: int) -> bool:
    """Both children answer HTTP (the listening socket alone accepts before Daphne runs)."""
    try:
        for _ in range(4):  # SO_REUSEPORT spreads connections: ask a few times
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=5) as r:
                r.read()
    except urllib.error.HTTPError:
        return True  # an answer (the test database is not migrated): Daphne runs
    except OSError:
        return False
    return True


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_child_that_dies_on_its_own_makes_serve_exit_non_zero(served, how):
    """Before: a Daphne child killed by a signal returned -9/-15, ``max(..., 0)`` made it 0 and
    a restart-on-failure policy left the web server down."""
    os.kill(_children(served.pid)[0], how)
    assert served.wait(30) != 0


def test_a_requested_stop_exits_zero(served):
    served.send_signal(signal.SIGTERM)
    assert served.wait(30) == 0
