"""Fixtures of the node agent tests: a stub shopper (http.server in a thread) and a runner that
starts the REAL agent (``shopper/agent.py``) as a subprocess with a fake nvidia-smi first in PATH
and a power-off command that only touches a marker file (PID 1 is never at risk)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

AGENT = Path(__file__).resolve().parents[2] / "shopper" / "agent.py"
TOKEN = "agent-secret-token-0123456789"


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy (bounded); returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def iso_in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


class StubShopper:
    """Answers POST /api/v1/agent/heartbeat with ``status``/``answer`` and records each request;
    GET /agent.py serves the agent file (for the start-up script)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 200
        self.answer: dict = {"action": "continue"}
        self.headers: dict = {}  # extra response headers of the heartbeat answer (e.g. Retry-After)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                stub.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body or b"null")}
                )
                self._send(stub.status, json.dumps(stub.answer).encode(), "application/json", stub.headers)

            def do_GET(self) -> None:
                if self.path == "/agent.py":
                    self._send(200, AGENT.read_bytes(), "text/x-python")
                else:
                    self._send(404, b"{}", "application/json")

            def _send(self, status: int, data: bytes, content_type: str, headers: dict | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def heartbeats(self) -> list[dict]:
        return [r for r in self.requests if r["path"] == "/api/v1/agent/heartbeat"]

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubShopper]:
    s = StubShopper()
    yield s
    s.stop()


class AgentRun:
    def __init__(self, tmp_path: Path, stub: StubShopper):
        self.tmp = tmp_path
        self.stub = stub
        self.marker = tmp_path / "powered-off"
        self.state = tmp_path / "state.json"
        self.log = tmp_path / "agent.log"
        self.smi_env = tmp_path / "nvidia-smi.env"
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f'#!/bin/sh\nenv > "{self.smi_env}"\nprintf "37, 1024, 24564\\n5, 0, 24564\\n"\n')
        smi.chmod(0o755)
        poweroff = bin_dir / "fake-poweroff"
        poweroff.write_text(f'#!/bin/sh\necho "$@" > "{self.marker}"\n')
        poweroff.chmod(0o755)
        self.env = {
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "SHOPPER_URL": stub.url,
            "SHOPPER_RENTAL_ID": "rental-1",
            "SHOPPER_AGENT_TOKEN": TOKEN,
            "SHOPPER_HARD_DEADLINE": iso_in(3600),
            "SHOPPER_HEARTBEAT_SECONDS": "0.2",
            "SHOPPER_UNREACHABLE_SECONDS": "60",
            "SHOPPER_POWEROFF_COMMAND": f"{poweroff} -h now",
            "SHOPPER_AGENT_PORT": "0",
            "SHOPPER_AGENT_STATE": str(self.state),
        }
        self.proc: subprocess.Popen | None = None

    def start(self, **env: str) -> AgentRun:
        self.env.update(env)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(AGENT)], env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        return self

    def once(self, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(AGENT), "--once"],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=20,
        )

    def powered_off(self, timeout: float = 30.0) -> str:
        wait_for(self.marker.exists, timeout)
        return self.marker.read_text().strip()

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def status(self) -> dict:
        return json.loads(self.state.read_text())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # only the agent process this test started
            self.proc.wait(5)


@pytest.fixture
def agent(tmp_path: Path, stub: StubShopper) -> Iterator[AgentRun]:
    run = AgentRun(tmp_path, stub)
    yield run
    run.stop()
