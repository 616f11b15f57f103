"""A jammed django-q2 cluster, with real processes: SIGKILL both worker processes while they wait
for work; the cluster reincarnates them and never runs a task again (the killed worker held the
task queue's reader lock, sessions/stalled.py).

- ``manage.py worker_health`` (the worker's compose healthcheck) fails, and `make run`'s
  ``WorkerWatch`` restarts the worker, after which tasks run again;
- the chaos phase (``tools.chaos --kill-idle-workers``): every due teardown still completes
  within 2 minutes, run by the safety loop, and rentals made into the jam fail without a create.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tools.chaos import qcluster_worker_pids
from tools.devserver import WorkerWatch, stop_group

ROOT = Path(__file__).resolve().parents[2]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def stack(tmp_path):
    """A migrated SQLite file and the environment of a worker on the ORM broker."""
    db = tmp_path / "q.sqlite3"
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.update(
        DEBUG="False", SHOPPER_TESTING="True", SECRET_KEY="stall-test-secret-key-0123456789abcdef",
        DATABASE_URL=f"sqlite:///{db}", CHANNEL_LAYER="memory", LOG_LEVEL="WARNING",
        SHOPPER_FERNET_KEYS="8n7cyPbD0kqf9cJ0kQk3yqXKkXy7Gxh0o6lZ0xg3G2s=",
        Q_WORKERS="2", Q_SYNC="False", Q_ORM_BROKER="True",
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True, timeout=300
    )
    return db, env


def health(env, max_age: float) -> subprocess.CompletedProcess:
    """The worker's healthcheck exactly as docker-compose.yml runs it, with a shorter bound."""
    test = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]["healthcheck"][
        "test"
    ]
    assert test[:2] == ["CMD", "python"]
    return subprocess.run(
        [sys.executable, *test[2:], "--max-age", str(max_age)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def probes(db: Path) -> dict[int, str | None]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT id, started_at FROM rentals_queueprobe"))


@pytest.mark.e2e
def test_killed_idle_workers_jam_the_queue_health_fails_and_the_watch_restarts_it(stack, tmp_path):
    db, env = stack
    log = (tmp_path / "worker.log").open("ab")

    def spawn():
        return subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env, stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip

    watch = WorkerWatch(spawn, env, interval=0, failures=1, max_age=3)
    try:
        workers = wait_for(lambda: qcluster_worker_pids(watch.proc.pid, 2), 60, "the qcluster workers")
        # A healthy queue runs the probe at once.
        assert health(env, 3).returncode == 0
        wait_for(lambda: all(probes(db).values()), 60, "the first probe to run")

        for pid in workers:  # both idle, waiting in task_queue.get()
            os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: (new := qcluster_worker_pids(watch.proc.pid, 2)) and not set(new) & set(workers),
            30,
            "the cluster to reincarnate its workers",
        )
        assert health(env, 3).returncode == 0  # nothing old yet; enqueues a probe
        (jammed,) = [pid for pid, started in probes(db).items() if not started]
        time.sleep(4)  # real processes: the probe had 4 s with two idle workers
        assert probes(db)[jammed] is None, "the reincarnated workers ran the probe: no jam"
        done = health(env, 3)
        assert done.returncode == 1 and f"probe {jammed} queued" in done.stderr

        before = watch.proc.pid
        watch.step()  # unhealthy once is enough here (failures=1): restart
        assert watch.proc.pid != before and watch.restarts
        restarted = max(probes(db))

        def a_new_probe_ran():
            health(env, 300)  # enqueue another (one the old pusher took is gone with it)
            return any(started for pid, started in probes(db).items() if pid > restarted)

        wait_for(a_new_probe_ran, 90, "a task to run on the restarted worker")
        # Healthy again once the newest probe older than the bound has run (the one the old
        # pusher took to its grave is older and no longer counts).
        wait_for(lambda: health(env, 3).returncode == 0, 90, "worker_health to pass again")
    finally:
        stop_group(watch.proc, signal.SIGKILL)


@pytest.mark.e2e
def test_the_watch_gives_up_loudly_when_restarts_do_not_help():
    spawned = []

    def spawn():
        proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
        spawned.append(proc)
        return proc

    watch = WorkerWatch(spawn, dict(os.environ), interval=0, failures=1, max_restarts=1)
    watch.healthy = lambda: False  # the queue never moves (its check is the test above)
    try:
        watch.step()
        assert len(spawned) == 2 and spawned[0].poll() is not None  # restarted once
        with pytest.raises(SystemExit, match="stopped moving 2 times"):
            watch.step()
    finally:
        for proc in spawned:
            stop_group(proc, signal.SIGKILL)


@pytest.mark.e2e
def test_idle_workers_killed_every_due_teardown_still_done_within_two_minutes():
    run = subprocess.run(
        [sys.executable, "-m", "tools.chaos", "--kill-idle-workers", "--rentals", "9",
         "--reservation-minutes", "1.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert "CHAOS OK" in run.stdout, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads(run.stdout[run.stdout.index("{") : run.stdout.rindex("}") + 1])
    assert report["workers_reincarnated"] and report["worker_health_exit"] == 1  # really jammed
    assert report["teardowns_after_kill"] >= 5 and report["teardowns_over_bound"] == 0
    assert report["teardown_after_due_s"]["max"] <= 120
    assert report["leaks"] == 0 and report["not_terminal"] == 0
    assert report["rented_into_jam"] == report["rented_into_jam_failed"]
    assert report["queue_stalled_alerts"] >= 1
