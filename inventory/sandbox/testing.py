"""Start the sandbox cloud as a real subprocess from tests.

    with running_sandbox(tmp_path, boot_delay=0) as sb:
        requests.post(sb.vastai_url + "/api/v0/bundles/", json={...})
        sb.set_faults({"rules": [{"op": "create", "fail_next": 1}]})
        sb.restart()          # same port, same state file (also: sb.crash() = SIGKILL, then start())
        assert sb.instances() == []

On exit it resets the sandbox (destroys every instance, killing their processes) and stops it.
Only the standard library and ``requests`` are used; nothing here imports Django.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SandboxHandle:
    def __init__(
        self, workdir: Path, *, boot_delay: float, faults: object, seed: int, extra_env: dict | None
    ):
        self.workdir = workdir
        self.state_file = workdir / "state.sqlite3"
        self.log_file = workdir / "sandbox.log"
        self.boot_delay = boot_delay
        self.faults = faults
        self.seed = seed
        self.extra_env = extra_env or {}
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen | None = None

    # -- URLs the adapters use ------------------------------------------------------------
    @property
    def vastai_url(self) -> str:
        return self.url + "/vastai"

    @property
    def tensordock_url(self) -> str:
        return self.url + "/tensordock/api/v2"

    @property
    def runpod_url(self) -> str:
        return self.url + "/runpod/v2"

    @property
    def lambda_url(self) -> str:
        return self.url + "/lambda/api/v1"

    # -- process control --------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        env = dict(os.environ, **self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        if self.faults is not None:
            env["SANDBOX_FAULTS"] = json.dumps(self.faults)
        else:
            env.pop("SANDBOX_FAULTS", None)
        cmd = [
            sys.executable, "-m", "inventory.sandbox",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--state-file", str(self.state_file),
            "--seed", str(self.seed), "--boot-delay", str(self.boot_delay),
        ]  # fmt: skip
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        ready: list[str] = []
        got = threading.Event()

        def read_stdout(stream) -> None:
            for line in iter(stream.readline, b""):  # keeps draining after READY
                text = line.decode(errors="replace").strip()
                if text.startswith("SANDBOX READY ") and not got.is_set():
                    ready.append(text.split(" ", 2)[2])
                    got.set()

        threading.Thread(target=read_stdout, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not got.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"sandbox did not start; log:\n{self.log_file.read_text()[-4000:]}")
        self.url = ready[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self, *, reset: bool = True, timeout: float = 10.0) -> None:
        """Stop the process; with ``reset`` first destroy every instance (and their processes)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if reset:
            with contextlib.suppress(requests.RequestException):
                self.reset()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def crash(self) -> None:
        """SIGKILL: nothing is flushed or closed; the state file must be enough."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Graceful stop without reset, then start on the same port with the same state."""
        self.stop(reset=False)
        self.start()

    # -- admin API ---------------------------------------------------------------------------
    def _admin(self, method: str, path: str, **kwargs) -> object:
        r = requests.request(method, f"{self.url}/_sandbox{path}", timeout=10, **kwargs)
        r.raise_for_status()
        return r.json()

    def reset(self) -> int:
        return self._admin("POST", "/reset")["destroyed"]  # type: ignore[index]

    def instances(self) -> list[dict]:
        return self._admin("GET", "/instances")["instances"]  # type: ignore[index]

    def get_faults(self) -> dict:
        return self._admin("GET", "/faults")  # type: ignore[return-value]

    def set_faults(self, config: object) -> dict:
        return self._admin("PUT", "/faults", json=config)  # type: ignore[return-value]

    def set_balance(self, vastai: float) -> dict:
        """The Vast account's credit (``GET /api/v0/users/current/``)."""
        return self._admin("PUT", "/balance", json={"vastai": vastai})  # type: ignore[return-value]

    def add_listing_only(self, dialect: str, labels: list[str]) -> list[dict]:
        """Listing-only instances, one per label: ``[{"id", "label"}, ...]``."""
        r = requests.post(
            f"{self.url}/_sandbox/instances/listing-only",
            json={"dialect": dialect, "labels": labels},
            timeout=120,
        )
        r.raise_for_status()
        return r.json()["instances"]

    def poweroff(self, dialect: str, instance_id: str | int) -> None:
        self._admin("POST", f"/instances/{dialect}/{instance_id}/poweroff")

    def calls(self) -> dict[str, int]:
        return self._admin("GET", "/calls")  # type: ignore[return-value]

    def catalog(self) -> dict:
        return self._admin("GET", "/catalog")  # type: ignore[return-value]


@contextmanager
def running_sandbox(
    tmp_path: Path,
    boot_delay: float = 0,
    faults: object = None,
    *,
    seed: int = 42,
    env: dict | None = None,
) -> Iterator[SandboxHandle]:
    """A sandbox subprocess with its state under ``tmp_path/sandbox``; reset and stopped on exit."""
    workdir = Path(tmp_path) / "sandbox"
    workdir.mkdir(parents=True, exist_ok=True)
    handle = SandboxHandle(workdir, boot_delay=boot_delay, faults=faults, seed=seed, extra_env=env)
    handle.start()
    try:
        yield handle
    finally:
        if handle.proc is not None and handle.proc.poll() is not None:
            handle.start()  # crashed inside the block: come back to clean up its machines
        handle.stop(reset=True)
