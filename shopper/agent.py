#!/usr/bin/env python3
"""Cloud GPU Shopper node agent: heartbeats to the shopper and powers this machine off when it must.

Runs on the rented GPU machine (standard library only, Python 3.8+; it never imports the project).
It powers the node off when
  * the shopper answers ``{"action": "shutdown"}`` (the rental is stopping or past its hard max),
  * the shopper answers 401 (the agent token was revoked at teardown),
  * the shopper has been unreachable (network errors, 5xx) longer than SHOPPER_UNREACHABLE_SECONDS,
    (the shopper's own 429 "throttled" answer is not unreachable: the agent waits Retry-After),
  * the hard deadline passes, by this machine's own clock (a watchdog thread, heartbeats or not).

Environment. The shopper sends the first six with the create request (``agent_env`` in the
sessions app: its URL, the rental, the token, the hard maximum, and the settings
SHOPPER_AGENT_HEARTBEAT_SECONDS / SHOPPER_AGENT_UNREACHABLE_SECONDS); the adapter puts them in
the machine's environment (Vast: the instance's env; TensorDock: exports before the start-up
script). The start-up script (``agent_onstart``) downloads this file from
$SHOPPER_URL/agent.py, sets SHOPPER_AGENT_STATE and starts it; the rest are for other uses:
  SHOPPER_URL                  base URL of the shopper, e.g. https://shopper.example.com   (required)
  SHOPPER_RENTAL_ID            the rental (session) id                                      (required)
  SHOPPER_AGENT_TOKEN          per-rental bearer token; never logged, never on a command line (required)
  SHOPPER_HARD_DEADLINE        ISO 8601 UTC time at which the node powers itself off       (required)
  SHOPPER_HEARTBEAT_SECONDS    seconds between heartbeats (default 30)
  SHOPPER_UNREACHABLE_SECONDS  power off after this long without a successful heartbeat (default 900)
  SHOPPER_POWEROFF_COMMAND     power-off command (default "shutdown -h now"; with the default, the
                               fallbacks are "poweroff", then SIGTERM/SIGKILL to PID 1, which is never
                               signalled inside the sandbox cloud, i.e. when SANDBOX_INSTANCE is set)
  SHOPPER_AGENT_PORT           local status endpoint on 127.0.0.1 (default 8799, 0 = any free port)
  SHOPPER_AGENT_STATE          optional file where the status JSON is written at every event
  SHOPPER_AGENT_BENCH_CMD      the GPU benchmark command (default: this Python with BENCH_SNIPPET,
                               PyTorch matmuls); "off" runs none
  SHOPPER_AGENT_BENCH_TIMEOUT  seconds before the benchmark is killed (default 120)

GPU benchmark (measured value, issue 18): once per agent run, when a heartbeat answer says
``"benchmark": true`` (the shopper asks once the rental is active, i.e. after the handoff, until it
has a report), a background thread runs the benchmark command at low priority with a hard timeout
and posts its JSON line (achieved dense TFLOPS and memory GB/s of GPU 0) to
``/api/v1/agent/benchmark``. Heartbeats never wait for it. Without PyTorch or CUDA the snippet
prints ``{"skipped": ...}`` and nothing is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UTC = datetime.timezone.utc  # noqa: UP017 -- the agent also runs on Python < 3.11
DEFAULT_POWEROFF = "shutdown -h now"
MAX_RETRY_AFTER = 300.0  # seconds; longest wait a 429's Retry-After may impose
NVIDIA_SMI = [
    "nvidia-smi",
    "--query-gpu=utilization.gpu,memory.used,memory.total",
    "--format=csv,noheader,nounits",
]
DEFAULT_BENCH_TIMEOUT = 120.0
# The default benchmark: a few seconds of dense matmuls (BF16 where the GPU has it, else FP32)
# and device-to-device copies on GPU 0; prints one JSON line. ~1.5 GB of GPU memory at most.
BENCH_SNIPPET = r"""
import json, sys, time
try:
    import torch
except Exception:
    print(json.dumps({"skipped": "no torch"}))
    sys.exit(0)
if not torch.cuda.is_available():
    print(json.dumps({"skipped": "no CUDA device"}))
    sys.exit(0)
dev = torch.device("cuda:0")
props = torch.cuda.get_device_properties(dev)
bf16 = props.major >= 8
dtype = torch.bfloat16 if bf16 else torch.float32
n = 8192
a = torch.randn(n, n, device=dev, dtype=dtype)
b = torch.randn(n, n, device=dev, dtype=dtype)
torch.matmul(a, b)
torch.cuda.synchronize()
runs, start = 0, time.perf_counter()
while runs < 500 and time.perf_counter() - start < 3.0:
    for _ in range(5):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    runs += 5
matmul_s = time.perf_counter() - start
del a, b
x = torch.empty(256 * 1024 * 1024, device=dev, dtype=torch.float32)  # 1 GiB
y = torch.empty_like(x)
y.copy_(x)
torch.cuda.synchronize()
copies, start = 0, time.perf_counter()
while copies < 500 and time.perf_counter() - start < 1.5:
    y.copy_(x)
    copies += 1
torch.cuda.synchronize()
copy_s = time.perf_counter() - start
print(json.dumps({
    "dtype": "bf16" if bf16 else "fp32",
    "tflops": round(2 * n ** 3 * runs / matmul_s / 1e12, 1),
    "gbps": round(2 * x.numel() * 4 * copies / copy_s / 1e9, 1),
    "gpu_name": props.name[:64],
    "gpu_count": torch.cuda.device_count(),
    "seconds": round(matmul_s + copy_s, 1),
}))
"""
log = logging.getLogger("shopper-agent")


def parse_time(text: str) -> datetime.datetime:
    value = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def read_gpus() -> list[dict]:
    """One entry per GPU from nvidia-smi; [] when it is absent or fails."""
    try:
        out = subprocess.run(NVIDIA_SMI, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            util, used, total = (max(0, int(float(p))) for p in parts[:3])
        except ValueError:
            continue  # "[N/A]" and the like
        gpus.append({"util": util, "mem_used_mb": used, "mem_total_mb": total})
    return gpus


class Agent:
    def __init__(self, env: dict[str, str]):
        missing = [k for k in ("SHOPPER_URL", "SHOPPER_RENTAL_ID", "SHOPPER_AGENT_TOKEN") if not env.get(k)]
        if missing:
            raise ValueError("missing environment: " + ", ".join(missing))
        self.url = env["SHOPPER_URL"].rstrip("/") + "/api/v1/agent/heartbeat"
        self.bench_url = env["SHOPPER_URL"].rstrip("/") + "/api/v1/agent/benchmark"
        self.bench_command = env.get("SHOPPER_AGENT_BENCH_CMD") or ""
        self.bench_timeout = max(1.0, float(env.get("SHOPPER_AGENT_BENCH_TIMEOUT") or DEFAULT_BENCH_TIMEOUT))
        self.bench_wanted = False  # the shopper's last answer asked for a benchmark
        self.bench_state = "off" if self.bench_command.strip().lower() == "off" else "not run"
        self.rental_id = env["SHOPPER_RENTAL_ID"]
        self._token = env["SHOPPER_AGENT_TOKEN"]
        try:
            self.deadline = parse_time(env.get("SHOPPER_HARD_DEADLINE", "")).timestamp()
        except ValueError:
            raise ValueError("SHOPPER_HARD_DEADLINE must be an ISO 8601 time") from None
        self.interval = max(0.1, float(env.get("SHOPPER_HEARTBEAT_SECONDS") or 30))
        self.unreachable = max(1.0, float(env.get("SHOPPER_UNREACHABLE_SECONDS") or 900))
        self.poweroff_command = env.get("SHOPPER_POWEROFF_COMMAND") or DEFAULT_POWEROFF
        self.may_kill_init = self.poweroff_command == DEFAULT_POWEROFF and not env.get("SANDBOX_INSTANCE")
        self.state_file = env.get("SHOPPER_AGENT_STATE") or ""
        self.started = time.monotonic()
        self.last_ok_mono: float | None = None
        self.last_ok_at: float | None = None
        self.failures = 0
        self.last_action = ""
        self.retry_after = 0.0  # from the shopper's last 429: wait at least this before the next heartbeat
        self.powering_off = False
        self.status_port: int | None = None
        self.stop = threading.Event()
        self._lock = threading.Lock()

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict:
        return {
            "rental_id": self.rental_id,
            "hard_deadline": iso(self.deadline),
            "seconds_left": max(0, int(self.deadline - time.time())),
            "last_heartbeat_ok_at": iso(self.last_ok_at),
            "consecutive_failures": self.failures,
            "last_action": self.last_action,
            "powering_off": self.powering_off,
            "status_port": self.status_port,
            "pid": os.getpid(),
            "benchmark": self.bench_state,
        }

    def save_state(self) -> None:
        if not self.state_file:
            return
        with self._lock:  # the main and watchdog threads both write it
            try:
                tmp = self.state_file + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(self.status(), f)
                os.replace(tmp, self.state_file)
            except OSError as exc:
                log.warning("cannot write state file %s: %s", self.state_file, exc)

    # -- heartbeat ------------------------------------------------------------------------------
    def heartbeat(self) -> str:
        """Send one heartbeat: "continue", "shutdown", "revoked" (401), "throttled" (429) or "error"."""
        body = {
            "rental_id": self.rental_id,
            "gpus": read_gpus(),
            "agent_time": iso(time.time()),
            "uptime_s": int(time.monotonic() - self.started),
        }
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": "Bearer " + self._token, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                answer = json.loads(resp.read().decode() or "{}")
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return self._record("revoked", ok=False, why="401: the agent token was revoked")
            if exc.code == 429 and self._shopper_throttled(exc):
                # The shopper answered and knows our token (it throttles after authenticating):
                # it is reachable, so this must not bring the unreachable failsafe closer.
                return self._record("throttled", ok=True, why="")
            return self._record("error", ok=False, why=f"HTTP {exc.code}")
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused, bad JSON
            return self._record("error", ok=False, why=f"{type(exc).__name__}: {exc}")
        action = answer.get("action") if isinstance(answer, dict) else None
        if action not in ("continue", "shutdown"):  # not the shopper (a proxy page, a wrong URL)
            return self._record("error", ok=False, why="unexpected answer (no action)")
        self.bench_wanted = answer.get("benchmark") is True
        if answer.get("hard_max_at"):
            with contextlib.suppress(ValueError):  # the shopper's word wins (staff may extend)
                self.deadline = parse_time(str(answer["hard_max_at"])).timestamp()
        return self._record(action, ok=True, why="")

    def _shopper_throttled(self, exc: urllib.error.HTTPError) -> bool:
        """A 429 in the shopper's error format (not some proxy's page); remembers Retry-After."""
        try:
            answer = json.loads(exc.read().decode() or "{}")
        except (OSError, ValueError):
            return False
        if not isinstance(answer, dict) or answer.get("code") != "throttled":
            return False
        try:
            wait = float(exc.headers.get("Retry-After") or self.interval)
        except ValueError:
            wait = self.interval
        # Bounded: a wild value must not silence heartbeats for long (the shopper's own heartbeat
        # timeout would then stop a healthy rental).
        self.retry_after = min(max(wait, 0.0), MAX_RETRY_AFTER)
        return True

    def _record(self, outcome: str, *, ok: bool, why: str) -> str:
        if ok:
            self.last_ok_mono, self.last_ok_at, self.failures = time.monotonic(), time.time(), 0
            log.info(
                "heartbeat ok: action=%s, %ds to the hard deadline", outcome, self.deadline - time.time()
            )
        else:
            self.failures += 1
            log.warning("heartbeat failed (%d in a row): %s", self.failures, why)
        self.last_action = outcome
        self.save_state()
        return outcome

    def unreachable_for(self) -> float:
        return time.monotonic() - (self.last_ok_mono if self.last_ok_mono is not None else self.started)

    # -- GPU benchmark ----------------------------------------------------------------------------
    def maybe_benchmark(self) -> bool:
        """Start the benchmark thread if the shopper asked and it never ran in this agent."""
        with self._lock:
            if not self.bench_wanted or self.bench_state != "not run" or self.powering_off:
                return False
            self.bench_state = "running"
        threading.Thread(target=self.benchmark, name="benchmark", daemon=True).start()
        return True

    def benchmark(self) -> None:
        """Run the benchmark command (bounded) and post its figures; never raises."""
        result = self.run_benchmark()
        if "skipped" in result or "error" in result:
            self.bench_state = "skipped: " + str(result.get("skipped") or result.get("error"))[:200]
            log.info("GPU benchmark %s", self.bench_state)
        else:
            self.bench_state = self.post_benchmark(result)
            log.info("GPU benchmark: %s TFLOPS %s, %s GB/s: %s", result.get("tflops"), result.get("dtype"),
                     result.get("gbps"), self.bench_state)  # fmt: skip
        self.save_state()

    def run_benchmark(self) -> dict:
        """The benchmark's JSON (its last line of output), or {"error": why}. Low priority (nice),
        killed after SHOPPER_AGENT_BENCH_TIMEOUT; the token is not in its environment."""
        default = [sys.executable, "-c", BENCH_SNIPPET]
        command = shlex.split(self.bench_command) if self.bench_command else default
        env = {k: v for k, v in os.environ.items() if k != "SHOPPER_AGENT_TOKEN"}
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=self.bench_timeout, env=env,
                stdin=subprocess.DEVNULL, preexec_fn=lambda: os.nice(10),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {self.bench_timeout:.0f}s"}
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        try:
            result = json.loads(lines[-1]) if lines else None
        except ValueError:
            result = None
        if not isinstance(result, dict):
            return {"error": f"exit {done.returncode}, no JSON: {(done.stderr or done.stdout)[-200:]!r}"}
        return result

    def post_benchmark(self, result: dict) -> str:
        """POST the figures (three tries); "reported", "refused: HTTP n" or "not reported: why"."""
        fields = ("dtype", "tflops", "gbps", "gpu_name", "gpu_count", "seconds")
        body = {"rental_id": self.rental_id, **{k: result[k] for k in fields if k in result}}
        why = ""
        for attempt in range(3):
            request = urllib.request.Request(
                self.bench_url,
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Authorization": "Bearer " + self._token, "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10):
                    return "reported"
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    return f"refused: HTTP {exc.code}"
                why = f"HTTP {exc.code}"
            except OSError as exc:
                why = f"{type(exc).__name__}: {exc}"
            if self.stop.wait(5 * (attempt + 1)):
                break
        return "not reported: " + why

    # -- power-off ------------------------------------------------------------------------------
    def power_off(self, reason: str) -> None:
        """Run the power-off chain once; on total failure retry every 30 s until it works."""
        with self._lock:
            if self.powering_off:
                return
            self.powering_off = True
        log.warning("POWERING OFF: %s", reason)
        self.save_state()
        chain = [self.poweroff_command] + (["poweroff"] if self.poweroff_command == DEFAULT_POWEROFF else [])
        while True:
            for command in chain:
                try:
                    rc = subprocess.run(shlex.split(command), timeout=60).returncode
                except (OSError, subprocess.SubprocessError, ValueError) as exc:
                    log.error("power-off command %r failed: %s", command, exc)
                    continue
                if rc == 0:
                    log.warning("power-off command %r succeeded", command)
                    self.stop.set()
                    return
                log.error("power-off command %r exited with %d", command, rc)
            if self.may_kill_init:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    log.error("killing PID 1 with %s", sig.name)
                    try:
                        os.kill(1, sig)
                    except OSError as exc:
                        log.error("kill PID 1 failed: %s", exc)
                    if self.stop.wait(10):
                        return
            log.error("power-off did not work; retrying in 30 s")
            if self.stop.wait(30):  # SIGTERM
                return

    def watchdog(self) -> None:
        """Independent of heartbeats: the hard deadline (own clock) and the unreachable failsafe."""
        while not self.stop.is_set() and not self.powering_off:
            if time.time() >= self.deadline:
                self.power_off(f"hard deadline {iso(self.deadline)} reached")
            elif self.unreachable_for() > self.unreachable:
                self.power_off(f"failsafe: shopper unreachable for {self.unreachable_for():.0f}s")
            else:
                self.stop.wait(min(1.0, max(0.05, self.deadline - time.time())))

    # -- local status endpoint --------------------------------------------------------------------
    def serve_status(self, port: int) -> None:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = self.path.split("?")[0] in ("/", "/status")
                data = json.dumps(agent.status() if found else {"detail": "not found"}).encode()
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # quiet
                pass

        try:
            server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            log.warning("status endpoint not started on 127.0.0.1:%d: %s", port, exc)
            return
        self.status_port = server.server_address[1]
        log.info("status endpoint on http://127.0.0.1:%d/status", self.status_port)
        threading.Thread(target=server.serve_forever, name="status", daemon=True).start()

    # -- main loop ------------------------------------------------------------------------------
    def run(self, port: int) -> int:
        log.info(
            "agent started for rental %s: heartbeat every %ss to %s, hard deadline %s, failsafe after %ds",
            self.rental_id, self.interval, self.url, iso(self.deadline), self.unreachable,
        )  # fmt: skip
        self.serve_status(port)
        self.save_state()
        threading.Thread(target=self.watchdog, name="watchdog", daemon=True).start()
        while not self.stop.is_set():
            outcome = ""
            if not self.powering_off:
                outcome = self.heartbeat()
                self.maybe_benchmark()
                if outcome == "shutdown":
                    self.power_off("the shopper asked for a shutdown")
                elif outcome == "revoked":
                    self.power_off("the agent token was revoked (401)")
            wait = max(self.interval, self.retry_after if outcome == "throttled" else 0.0)
            self.stop.wait(wait)
        log.info("agent stopped")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--once", action="store_true", help="send one heartbeat, print the outcome and exit "
        "(0 continue, 3 shutdown requested, 4 token revoked, 5 throttled, 1 unreachable); never powers off"
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s shopper-agent %(message)s")
    try:
        agent = Agent(dict(os.environ))
        port = int(os.environ.get("SHOPPER_AGENT_PORT") or 8799)
    except ValueError as exc:
        log.error("configuration error: %s", exc)
        return 2
    os.environ.pop("SHOPPER_AGENT_TOKEN", None)  # children (nvidia-smi, shutdown) need not see it
    if args.once:
        outcome = agent.heartbeat()
        print(json.dumps({"outcome": outcome, **agent.status()}))
        return {"continue": 0, "shutdown": 3, "revoked": 4, "throttled": 5}.get(outcome, 1)

    def on_sigterm(signum, frame) -> None:
        log.info("signal %d received: stopping (no power-off)", signum)
        agent.stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    return agent.run(port)


if __name__ == "__main__":
    sys.exit(main())
