"""The web side of the up stretch (sessions/uptime.py) in real processes: every ``shopper.serve``
web process records itself, however idle, so an outage of the web server restarts the stretch
and a running one continues it. The whole-stack outage with agents heartbeating is the chaos
run's grace phase (tests/e2e/test_chaos.py)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GAP = 4  # SHOPPER_UPTIME_GAP_SECONDS for these processes: a touch every second

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web_row(db: Path) -> tuple[datetime, datetime] | None:
    with sqlite3.connect(db, timeout=10) as conn:
        row = conn.execute("SELECT since, seen_at FROM rentals_upstretch WHERE role = 'web'").fetchone()
    return (datetime.fromisoformat(row[0]), datetime.fromisoformat(row[1])) if row else None


def wait_for(check, limit: float = 30.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {limit} s")


@pytest.fixture
def stack(tmp_path):
    db = tmp_path / "grace.sqlite3"
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{db}", SHOPPER_UPTIME_GAP_SECONDS=str(GAP))
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    port, procs = free_port(), []

    def start() -> None:
        cmd = [sys.executable, "-m", "shopper.serve", "--port", str(port), "--workers", "2"]
        log = (tmp_path / "web.log").open("ab")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True))

    def stop() -> None:
        proc = procs[-1]
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)

    yield db, start, stop
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_an_idle_web_server_keeps_its_stretch_and_an_outage_starts_a_new_one(stack):
    db, start, stop = stack
    start()
    since, first_seen = wait_for(lambda: web_row(db))
    # No request reaches it; its processes still touch the row, longer than a gap, in one stretch.
    wait_for(lambda: web_row(db)[1].timestamp() >= first_seen.timestamp() + GAP + 1)
    assert web_row(db)[0] == since

    stop()
    down_at = web_row(db)[1]
    time.sleep(GAP + 1)  # real processes: the outage has to last longer than the gap
    start()
    wait_for(lambda: web_row(db)[0] > down_at)
    new_since, _ = web_row(db)
    assert new_since.timestamp() - down_at.timestamp() > GAP
