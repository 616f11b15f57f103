"""`make run`: migrate, sync schedules, create the demo admin, start the sandbox cloud (when no
provider keys are set), the web server and the worker; stop them all on Ctrl-C.

The worker is watched (``WorkerWatch``): a django-q2 cluster can stop taking tasks while all its
processes live (sessions/stalled.py), so ``manage.py worker_health`` is asked every 30 s and a
worker unhealthy twice in a row is restarted; one that needs restarting over and over stops
everything, loudly.

On its first run it writes a git-ignored ``.env`` for development (``write_dotenv``: debug on, a
generated ``SECRET_KEY`` and Fernet key) that settings.py reads, so ``manage.py createsuperuser``
or ``create_token`` work in another shell with no environment set. An existing ``.env`` is never
touched. "running" is printed once the web server answers. Stopping (Ctrl-C or SIGTERM) signals
every process group it started and waits for them; a second Ctrl-C or SIGTERM during that wait
SIGKILLs whatever is left (``stop_all``) rather than abandoning it, so nothing stays on its port.

Imports no Django: it only orchestrates processes, so a crash in one is visible and the others
are stopped with it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# Any of these set means real providers: no sandbox cloud is started.
REAL_PROVIDER_KEYS = ("VASTAI_API_KEY", "TENSORDOCK_API_TOKEN", "RUNPOD_API_KEY", "LAMBDA_API_KEY")


def _manage(*args: str, env: dict) -> None:
    subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=env, check=True)


def _spawn(cmd: list[str], env: dict, **kwargs) -> subprocess.Popen:
    # Own process group: on the way out the whole group (qcluster's forked workers too) can go.
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, **kwargs)


DOTENV_HEADER = """\
# Written by `make run` for local development: git-ignored, never used by production (which
# sets its variables itself; see .env.example). settings.py reads this file, so manage.py works
# in any shell. Delete it for fresh keys (keys of sessions made with the old Fernet key are lost).
"""


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a .env file (comments and blank lines skipped, quotes stripped)."""
    values: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            values[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


def write_dotenv(root: Path) -> bool:
    """Write ``root/.env`` for development unless one exists (never overwritten: O_EXCL). The
    Fernet key of an earlier ``make run`` (``.run/fernet.key``) is kept, so the generated SSH keys
    it encrypted still decrypt. Returns whether a file was written."""
    from cryptography.fernet import Fernet

    old_key = root / ".run" / "fernet.key"
    fernet = old_key.read_text().strip() if old_key.is_file() else Fernet.generate_key().decode()
    text = (
        f"{DOTENV_HEADER}DEBUG=True\nSECRET_KEY={secrets.token_urlsafe(50)}\nSHOPPER_FERNET_KEYS={fernet}\n"
    )
    try:
        fd = os.open(root / ".env", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def wait_until_answering(url: str, procs: list[tuple[str, subprocess.Popen]], timeout: float = 120) -> None:
    """Return once ``url`` gives any HTTP answer; SystemExit if a process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return  # an answer all the same
        except (OSError, ValueError):
            pass
        for name, proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with code {proc.returncode} during start-up.")
        if time.monotonic() > deadline:
            raise SystemExit(f"The web server did not answer at {url} within {timeout:.0f} s.")
        time.sleep(0.2)


def impatient_on(hurry: list[int]) -> dict:
    """From now on Ctrl-C and SIGTERM only note themselves in ``hurry`` (no KeyboardInterrupt
    that would abandon the shutdown half-way). Returns the handlers replaced."""

    def impatient(signum, frame):
        if not hurry:
            print("\nStopping now (SIGKILL)…", flush=True)
        hurry.append(signum)

    return {sig: signal.signal(sig, impatient) for sig in (signal.SIGINT, signal.SIGTERM)}


def stop_all(
    procs: list[tuple[str, subprocess.Popen]], grace: float = 15, hurry: list[int] | None = None
) -> None:
    """Stop every process group in ``procs`` (newest first; the worker with SIGINT, its warm
    shutdown, the others with SIGTERM), wait up to ``grace`` seconds, then SIGKILL what is left.

    A Ctrl-C or SIGTERM that arrives meanwhile must not abandon the wait half-way (the processes
    not yet reaped would outlive us, the sandbox still on its port): it only cuts the grace
    period short. Each group is SIGKILLed at the end whatever happened, so a forked child that
    outlived its parent (qcluster's workers) goes too. ``hurry``: signals already received."""
    hurry = [] if hurry is None else hurry
    previous = impatient_on(hurry)
    try:
        for name, proc in reversed(procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGINT if name == "worker" else signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not hurry and time.monotonic() < deadline and any(p.poll() is None for _, p in procs):
            time.sleep(0.1)
        for _, proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for _, proc in procs:
            proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


def _start_sandbox(
    env: dict, port: int, procs: list[tuple[str, subprocess.Popen]]
) -> tuple[subprocess.Popen, str]:
    state_dir = ROOT / ".sandbox"
    state_dir.mkdir(exist_ok=True)
    state = str(state_dir / "state.sqlite3")
    cmd = [PY, "-m", "inventory.sandbox", "--host", "127.0.0.1", "--port", str(port), "--state-file", state]
    proc = _spawn(cmd, env, stdout=subprocess.PIPE, text=True)
    procs.append(("sandbox", proc))  # at once: an interrupt while it starts must still stop it
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
    if write_dotenv(ROOT):
        print(f"Wrote {ROOT / '.env'} for development (debug on, generated keys; git-ignored).")
    env = dict(os.environ)
    env.setdefault("DEBUG", "True")
    host = env.get("HOST", "127.0.0.1")
    port = int(env.get("PORT", "8000"))
    env.setdefault("SHOPPER_PUBLIC_URL", f"http://{host}:{port}")
    procs: list[tuple[str, subprocess.Popen]] = []
    watch: WorkerWatch | None = None
    hurry: list[int] = []
    if not env.get("SHOPPER_FERNET_KEYS") and not read_dotenv(ROOT / ".env").get("SHOPPER_FERNET_KEYS"):
        # An own .env without the key: a local key for generated SSH keys, kept out of git (.run/).
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

    use_sandbox = not any(env.get(name) for name in REAL_PROVIDER_KEYS)
    try:
        if use_sandbox:
            env["SHOPPER_SANDBOX_FAULTS"] = sandbox_faults(env)
            _, url = _start_sandbox(env, int(env.get("SANDBOX_PORT", "8765")), procs)
            env.update(
                SHOPPER_SANDBOX="True",
                VASTAI_API_URL=f"{url}/vastai",
                VASTAI_API_KEY="sandbox-vast-key",
                TENSORDOCK_API_URL=f"{url}/tensordock/api/v2",
                TENSORDOCK_API_TOKEN="sandbox-tensordock-token",
                RUNPOD_API_URL=f"{url}/runpod/v2",
                RUNPOD_API_KEY="sandbox-runpod-key",
                LAMBDA_API_URL=f"{url}/lambda/api/v1",
                LAMBDA_API_KEY="sandbox-lambda-key",
            )
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
        answer_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        wait_until_answering(f"http://{answer_host}:{port}/api/v1/health", [*procs, ("worker", watch.proc)])
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
        impatient_on(hurry)  # first: a second Ctrl-C while this prints must not skip the stop
        print("\nStopping… (Ctrl-C again to kill everything at once)", flush=True)
    finally:
        impatient_on(hurry)
        if watch is not None:
            procs.append(("worker", watch.proc))
        stop_all(procs, hurry=hurry)


if __name__ == "__main__":
    main()
