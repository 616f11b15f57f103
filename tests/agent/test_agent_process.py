"""The REAL node agent (``shopper/agent.py`` as a subprocess) against a stub shopper.

Every power-off here runs a script that touches a marker file (SHOPPER_POWEROFF_COMMAND), never the
real ``shutdown``; every wait is bounded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

from tests.agent.conftest import AGENT, TOKEN, iso_in, wait_for


def test_heartbeats_carry_the_bearer_token_and_gpu_data(agent, stub):
    agent.start()
    [first, *_] = wait_for(lambda: len(stub.heartbeats()) >= 2 and stub.heartbeats())
    assert first["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert first["headers"]["Content-Type"] == "application/json"
    body = first["body"]
    assert body["rental_id"] == "rental-1"
    assert body["gpus"] == [
        {"util": 37, "mem_used_mb": 1024, "mem_total_mb": 24564},
        {"util": 5, "mem_used_mb": 0, "mem_total_mb": 24564},
    ]
    assert body["agent_time"].endswith("+00:00") and isinstance(body["uptime_s"], int)
    assert not agent.marker.exists() and agent.proc.poll() is None  # "continue": keeps running
    # The token is neither logged nor handed down to child processes (nvidia-smi, shutdown).
    assert TOKEN not in agent.log_text()
    assert TOKEN not in agent.smi_env.read_text() and "SHOPPER_RENTAL_ID" in agent.smi_env.read_text()


def test_no_nvidia_smi_means_no_gpu_fields(agent, stub):
    result = agent.once(PATH="/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    assert stub.heartbeats()[0]["body"]["gpus"] == []


def test_shutdown_action_powers_off_and_exits(agent, stub):
    stub.answer = {"action": "shutdown", "hard_max_at": iso_in(3600)}
    agent.start()
    assert agent.powered_off() == "-h now"
    assert agent.wait_exit() == 0
    assert "POWERING OFF: the shopper asked for a shutdown" in agent.log_text()
    assert len(stub.heartbeats()) == 1


def test_hard_deadline_powers_off_by_its_own_clock(agent, stub):
    deadline = iso_in(2)
    stub.answer = {"action": "continue", "hard_max_at": deadline}
    started = time.monotonic()
    agent.start(SHOPPER_HARD_DEADLINE=deadline)
    agent.powered_off()
    assert 1.0 <= time.monotonic() - started < 8
    assert agent.wait_exit() == 0
    assert "hard deadline" in agent.log_text()
    assert stub.heartbeats()  # the shopper was up all along


def test_an_earlier_hard_max_from_the_shopper_wins(agent, stub):
    stub.answer = {"action": "continue", "hard_max_at": iso_in(1)}
    agent.start()  # env deadline is an hour away
    agent.powered_off()
    assert "hard deadline" in agent.log_text()


def test_failsafe_when_the_shopper_is_unreachable(agent, stub):
    stub.stop()
    started = time.monotonic()
    agent.start(SHOPPER_UNREACHABLE_SECONDS="2", SHOPPER_HEARTBEAT_SECONDS="0.5")
    agent.powered_off()
    assert 2.0 <= time.monotonic() - started < 8
    assert agent.wait_exit() == 0
    assert "failsafe: shopper unreachable" in agent.log_text()


def test_server_errors_count_as_unreachable_and_success_resets_the_clock(agent, stub):
    stub.status, stub.answer = 503, {"detail": "down"}
    agent.start(SHOPPER_UNREACHABLE_SECONDS="2", SHOPPER_HEARTBEAT_SECONDS="0.2")
    wait_for(lambda: agent.state.exists() and agent.status()["consecutive_failures"] >= 2)
    stub.status, stub.answer = 200, {"action": "continue"}  # back before the failsafe
    wait_for(lambda: agent.status()["consecutive_failures"] == 0)
    time.sleep(1.0)
    assert not agent.marker.exists()
    stub.status = 500  # and gone again: the failsafe counts from the last success
    agent.powered_off()
    assert "failsafe" in agent.log_text()


def test_the_shoppers_429_is_not_unreachable_and_retry_after_is_honoured(agent, stub):
    """A throttled agent talks to a live shopper: it must not power a healthy machine off."""
    stub.status, stub.answer = 429, {"detail": "Too many heartbeats.", "code": "throttled"}
    stub.headers = {"Retry-After": "1"}
    agent.start(SHOPPER_UNREACHABLE_SECONDS="2", SHOPPER_HEARTBEAT_SECONDS="0.1")
    wait_for(lambda: agent.state.exists() and agent.status()["last_action"] == "throttled")
    time.sleep(3.5)  # well past the 2 s failsafe (a real process on a real clock)
    assert not agent.marker.exists()
    assert agent.status()["consecutive_failures"] == 0
    # Every 1 s (Retry-After), not every 0.1 s: about 4 heartbeats in 3.5 s, not 35.
    assert len(stub.heartbeats()) <= 6
    stub.status, stub.answer, stub.headers = 200, {"action": "continue"}, {}
    wait_for(lambda: agent.status()["last_action"] == "continue")


def test_a_429_that_is_not_the_shoppers_still_counts_as_unreachable(agent, stub):
    stub.status, stub.answer = 429, {"message": "rate limited by some proxy"}
    agent.start(SHOPPER_UNREACHABLE_SECONDS="2", SHOPPER_HEARTBEAT_SECONDS="0.2")
    agent.powered_off()
    assert "failsafe" in agent.log_text()


def test_revoked_token_401_powers_off(agent, stub):
    stub.status, stub.answer = 401, {"detail": "no", "code": "invalid_agent_token"}
    agent.start()
    agent.powered_off()
    assert agent.wait_exit() == 0
    assert "revoked" in agent.log_text() and TOKEN not in agent.log_text()


def test_local_status_endpoint_answers_json(agent, stub):
    agent.start()
    wait_for(lambda: stub.heartbeats() and agent.state.exists() and agent.status()["last_heartbeat_ok_at"])
    port = agent.status()["status_port"]
    for path in ("/", "/status"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            status = json.loads(resp.read())
        assert status["rental_id"] == "rental-1"
        assert 3500 < status["seconds_left"] <= 3600
        assert status["hard_deadline"] and status["last_heartbeat_ok_at"]
        assert status["consecutive_failures"] == 0
        assert status["last_action"] == "continue" and status["powering_off"] is False
    assert TOKEN not in json.dumps(status)


def test_sigterm_stops_cleanly_without_powering_off(agent, stub):
    agent.start()
    wait_for(stub.heartbeats)
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    assert not agent.marker.exists()
    assert "stopping (no power-off)" in agent.log_text()


def test_once_sends_one_heartbeat_and_reports(agent, stub):
    result = agent.once()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outcome"] == "continue"
    assert len(stub.heartbeats()) == 1
    stub.status = 401
    assert agent.once().returncode == 4
    stub.status, stub.answer = 200, {"action": "shutdown"}
    assert agent.once().returncode == 3
    assert not agent.marker.exists()  # --once never powers off
    stub.answer = {"hello": "a proxy page, not the shopper"}
    assert agent.once().returncode == 1  # counts as unreachable, not as a good heartbeat
    stub.stop()
    assert agent.once().returncode == 1


def test_missing_configuration_is_refused(agent):
    result = agent.once(SHOPPER_AGENT_TOKEN="")
    assert result.returncode == 2 and "SHOPPER_AGENT_TOKEN" in result.stderr
    result = agent.once(SHOPPER_HARD_DEADLINE="tomorrow")
    assert result.returncode == 2 and "SHOPPER_HARD_DEADLINE" in result.stderr


def test_help_documents_the_environment():
    out = subprocess.run([sys.executable, str(AGENT), "--help"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0
    for name in (
        "SHOPPER_URL", "SHOPPER_RENTAL_ID", "SHOPPER_AGENT_TOKEN", "SHOPPER_HARD_DEADLINE",
        "SHOPPER_HEARTBEAT_SECONDS", "SHOPPER_UNREACHABLE_SECONDS", "SHOPPER_POWEROFF_COMMAND",
        "SHOPPER_AGENT_PORT", "SHOPPER_AGENT_STATE", "--once",
    ):  # fmt: skip
        assert name in out.stdout
