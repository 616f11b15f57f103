"""`make run`: migrate, sync schedules, create the demo admin, start the sandbox cloud (when no
provider keys are set), the web server and the worker; stop them all on Ctrl-C.

The worker is watched (``WorkerWatch``): a django-q2 cluster can stop taking tasks while all its
processes live (sessions/stalled.py), so ``manage.py worker_health`` is asked every 30 s and a
worker unhealthy twice in a row is restarted; one that needs restarting over and over stops
everything, loudly.

Imports no Django: it only orchestrates processes, so a crash in one is visible and the others
are stopped with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def _manage(*args: str, env: dict) -> None:
    subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=env, check=True)


def _spawn(cmd: list[str], env: dict, **kwargs) -> subprocess.Popen:
    # Own process group: on the way out the whole group (qcluster's forked workers too) can go.
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, **kwargs)


def sandbox_faults(env: dict) -> str:
    """The sandbox's faults for ``make run``: the field-notes mix (``inventory.sandbox.faults.
    FIELD_MIX``) unless ``SANDBOX_FAULTS`` says otherwise (``none`` turns them off). Sets
    ``SANDBOX_FAULTS`` for the sandbox and returns the plain words the page banner shows."""
    from inventory.sandbox import faults

    env.setdefault("SANDBOX_FAULTS", "field")
    try:
        return faults.describe(faults.parse(env["SANDBOX_FAULTS"]))
    except faults.FaultConfigError as exc:
        raise SystemExit(f"SANDBOX_FAULTS: {exc}") from exc


def _start_sandbox(env: dict, port: int) -> tuple[subprocess.Popen, str]:
    state_dir = ROOT / ".sandbox"
    state_dir.mkdir(exist_ok=True)
    state = str(state_dir / "state.sqlite3")
    cmd = [PY, "-m", "inventory.sandbox", "--host", "127.0.0.1", "--port", str(port), "--state-file", state]
    proc = _spawn(cmd, env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("The sandbox cloud exited during start-up; see the lines above.")
        print(f"[sandbox] {line.rstrip()}")
        if line.startswith("SANDBOX READY"):
            url = line.split()[-1].rstrip("/")
            # Keep draining its output so the pipe never fills up and blocks it.
            import threading

            def drain() -> None:
                for rest in proc.stdout:  # type: ignore[union-attr]
                    print(f"[sandbox] {rest.rstrip()}", flush=True)

            threading.Thread(target=drain, daemon=True).start()
            return proc, url
    raise SystemExit("The sandbox cloud did not report ready within 60 s.")


class WorkerWatch:
    """Restart the django-q2 worker when the queue stops moving; give up loudly if that repeats.

    ``spawn`` starts a worker (in its own process group, so its forked workers go with it)."""

    def __init__(
        self,
        spawn: Callable[[], subprocess.Popen],
        env: dict,
        *,
        interval: float = 30.0,
        failures: int = 2,
        max_restarts: int = 3,
        window: float = 900.0,
        max_age: float | None = None,
    ):
        self.spawn, self.env = spawn, env
        self.interval, self.failures, self.max_restarts, self.window = (
            interval,
            failures,
            max_restarts,
            window,
        )
        self.max_age = max_age
        self.proc = spawn()
        self.unhealthy = 0
        self.restarts: list[float] = []
        self.next_check = time.monotonic() + interval

    def healthy(self) -> bool:
        cmd = [PY, "manage.py", "worker_health"]
        if self.max_age is not None:
            cmd += ["--max-age", str(self.max_age)]
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            print("[watch] worker_health did not answer within 60 s", flush=True)
            return False
        if done.returncode != 0:
            print(f"[watch] {(done.stderr or done.stdout).strip()[-500:]}", flush=True)
        return done.returncode == 0

    def step(self) -> None:
        """Called from the main loop; checks when due, restarts or raises SystemExit."""
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + self.interval
        if self.healthy():
            self.unhealthy = 0
            return
        self.unhealthy += 1
        if self.unhealthy < self.failures:
            return
        self.restarts = [t for t in self.restarts if now - t < self.window] + [now]
        if len(self.restarts) > self.max_restarts:
            raise SystemExit(
                f"WORKER: the task queue stopped moving {len(self.restarts)} times within "
                f"{self.window / 60:.0f} min although the worker was restarted; stopping everything."
            )
        print("\n[watch] WORKER: the task queue stopped moving; restarting the worker.\n", flush=True)
        self.restart()

    def restart(self) -> None:
        stop_group(self.proc, signal.SIGTERM)
        self.unhealthy = 0
        self.proc = self.spawn()


def stop_group(proc: subprocess.Popen, sig: int, timeout: float = 10) -> None:
    """Signal the process group; SIGKILL it if it has not exited within ``timeout``. A jammed
    qcluster never finishes its own stop (its workers wait on the queue's lock forever)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (e.g. from a supervisor or `timeout`) stops like Ctrl-C


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    env = dict(os.environ)
    env.setdefault("DEBUG", "True")
    env.setdefault("SECRET_KEY", "dev-only-make-run-key-not-for-production")
    host = env.get("HOST", "127.0.0.1")
    port = int(env.get("PORT", "8000"))
    env.setdefault("SHOPPER_PUBLIC_URL", f"http://{host}:{port}")
    procs: list[tuple[str, subprocess.Popen]] = []
    watch: WorkerWatch | None = None
    if not env.get("SHOPPER_FERNET_KEYS"):
        # A local key for generated SSH keys, made once and kept out of git (.run/).
        key_file = ROOT / ".run" / "fernet.key"
        if not key_file.exists():
            from cryptography.fernet import Fernet

            key_file.parent.mkdir(exist_ok=True)
            key_file.write_text(Fernet.generate_key().decode())
            key_file.chmod(0o600)
        env["SHOPPER_FERNET_KEYS"] = key_file.read_text().strip()

    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        # Provider-call metrics of the worker and the safety loop show on the web's /metrics
        # (prometheus_client multiprocess mode); the directory must start empty every run.
        metrics_dir = ROOT / ".run" / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    use_sandbox = not (env.get("VASTAI_API_KEY") or env.get("TENSORDOCK_API_TOKEN"))
    if use_sandbox:
        env["SHOPPER_SANDBOX_FAULTS"] = sandbox_faults(env)
        sandbox, url = _start_sandbox(env, int(env.get("SANDBOX_PORT", "8765")))
        procs.append(("sandbox", sandbox))
        env.update(
            SHOPPER_SANDBOX="True",
            VASTAI_API_URL=f"{url}/vastai",
            VASTAI_API_KEY="sandbox-vast-key",
            TENSORDOCK_API_URL=f"{url}/tensordock/api/v2",
            TENSORDOCK_API_TOKEN="sandbox-tensordock-token",
        )

    try:
        _manage("migrate", "--noinput", env=env)
        _manage("sync_schedules", env=env)
        _manage("create_demo_admin", env=env)
        _manage("refresh_offers", env=env)
        web = [
            PY,
            "-m",
            "shopper.serve",
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            env.get("WEB_WORKERS", "2"),
        ]
        procs.append(("web", _spawn(web, env)))
        watch = WorkerWatch(lambda: _spawn([PY, "manage.py", "qcluster"], env), env)
        procs.append(("safety", _spawn([PY, "manage.py", "safety_loop"], env)))
        print(
            "\n"
            "  Cloud GPU Shopper is running.\n"
            f"  Open  http://{host}:{port}/  and log in as  admin / admin\n"
            f"  Offers come from {'the local SANDBOX cloud' if use_sandbox else 'the real providers'}.\n"
            + (
                f"  The sandbox fails like the real providers do ({env['SHOPPER_SANDBOX_FAULTS']});\n"
                "  SANDBOX_FAULTS=none make run  turns them off.\n"
                if use_sandbox and env.get("SHOPPER_SANDBOX_FAULTS")
                else ""
            )
            + "  Press Ctrl-C to stop everything.\n",
            flush=True,
        )
        while True:
            for name, proc in [*procs, ("worker", watch.proc)]:
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited with code {proc.returncode}; stopping the rest.")
            watch.step()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping…")
    finally:
        if watch is not None:
            procs.append(("worker", watch.proc))
        for name, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if name == "worker" else signal.SIGTERM)
        for _, proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # Its own children too (qcluster forks workers): the whole process group.
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
