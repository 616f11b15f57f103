"""The REAL node agent's GPU benchmark (issue 18, measured value) against the stub shopper: run once
when the heartbeat answer asks, in the background (heartbeats go on), bounded by a hard timeout,
skipped quietly without PyTorch; the token never reaches the benchmark's environment."""

from __future__ import annotations

from pathlib import Path

from tests.agent.conftest import TOKEN, wait_for

BENCH_PATH = "/api/v1/agent/benchmark"
FIGURES = (
    '{"dtype": "bf16", "tflops": 123.4, "gbps": 876.5, "gpu_name": "NVIDIA L4", '
    + '"gpu_count": 2, "seconds": 1.5}'
)


def bench_script(tmp_path: Path, body: str) -> str:
    """A benchmark command that records its environment and each run, then runs ``body``."""
    script = tmp_path / "bench.sh"
    script.write_text(
        f'#!/bin/sh\nenv > "{tmp_path}/bench.env"\necho run >> "{tmp_path}/bench.runs"\n{body}\n'
    )
    script.chmod(0o755)
    return str(script)


def bench_state(agent) -> str:
    """The agent's benchmark state ("" before its first state file)."""
    return agent.status()["benchmark"] if agent.state.exists() else ""


def reports(stub) -> list[dict]:
    return [r for r in stub.requests if r["path"] == BENCH_PATH]


def test_asked_once_it_benchmarks_in_the_background_and_reports_once(agent, stub, tmp_path):
    stub.answer = {"action": "continue", "benchmark": True}  # the shopper asks until it has a report
    command = bench_script(tmp_path, f"sleep 1.5\necho 'warming up'\necho '{FIGURES}'")
    agent.start(SHOPPER_AGENT_BENCH_CMD=command)

    [report] = wait_for(lambda: reports(stub), timeout=20)
    assert report["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert report["body"] == {
        "rental_id": "rental-1",
        "dtype": "bf16",
        "tflops": 123.4,
        "gbps": 876.5,
        "gpu_name": "NVIDIA L4",
        "gpu_count": 2,
        "seconds": 1.5,
    }
    # Heartbeats (every 0.2 s) went on while the benchmark ran for 1.5 s.
    paths = [r["path"] for r in stub.requests]
    assert paths.index(BENCH_PATH) >= 6
    wait_for(lambda: bench_state(agent) == "reported", timeout=5)
    count = len(stub.heartbeats())
    wait_for(lambda: len(stub.heartbeats()) >= count + 5, timeout=10)
    assert len(reports(stub)) == 1 and (tmp_path / "bench.runs").read_text() == "run\n"  # once per run
    env = (tmp_path / "bench.env").read_text()
    assert TOKEN not in env and "SHOPPER_RENTAL_ID" in env
    assert not agent.marker.exists()


def test_not_asked_it_never_runs(agent, stub, tmp_path):
    agent.start(SHOPPER_AGENT_BENCH_CMD=bench_script(tmp_path, f"echo '{FIGURES}'"))
    wait_for(lambda: len(stub.heartbeats()) >= 5, timeout=10)
    assert not (tmp_path / "bench.runs").exists() and not reports(stub)
    assert bench_state(agent) == "not run"


def test_a_hung_benchmark_is_killed_at_its_timeout_and_nothing_is_reported(agent, stub, tmp_path):
    stub.answer = {"action": "continue", "benchmark": True}
    agent.start(
        SHOPPER_AGENT_BENCH_CMD=bench_script(tmp_path, "exec sleep 60"), SHOPPER_AGENT_BENCH_TIMEOUT="1"
    )
    wait_for(lambda: bench_state(agent) == "skipped: timed out after 1s", timeout=15)
    count = len(stub.heartbeats())
    wait_for(lambda: len(stub.heartbeats()) >= count + 3, timeout=10)  # heartbeats never stopped
    assert not reports(stub) and (tmp_path / "bench.runs").read_text() == "run\n"


def test_without_torch_the_default_snippet_skips_quietly(agent, stub):
    stub.answer = {"action": "continue", "benchmark": True}
    agent.start()  # no SHOPPER_AGENT_BENCH_CMD: this Python with the PyTorch snippet (no torch here)
    wait_for(lambda: bench_state(agent) == "skipped: no torch", timeout=20)
    assert not reports(stub)
    assert "GPU benchmark skipped: no torch" in agent.log_text()


def test_output_without_json_is_not_reported(agent, stub, tmp_path):
    stub.answer = {"action": "continue", "benchmark": True}
    agent.start(
        SHOPPER_AGENT_BENCH_CMD=bench_script(tmp_path, "echo 'CUDA error: out of memory' >&2; exit 1")
    )
    wait_for(lambda: bench_state(agent).startswith("skipped: exit 1, no JSON"), timeout=15)
    assert "out of memory" in bench_state(agent) and not reports(stub)


def test_off_turns_it_off(agent, stub, tmp_path):
    stub.answer = {"action": "continue", "benchmark": True}
    agent.start(SHOPPER_AGENT_BENCH_CMD="off")
    wait_for(lambda: len(stub.heartbeats()) >= 4, timeout=10)
    assert bench_state(agent) == "off" and not reports(stub)
