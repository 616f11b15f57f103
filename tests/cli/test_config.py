"""``gpu-shopper config``, ``--help`` everywhere, and errors that never reach (or never pass) the server."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shopper import cli

COMMANDS = ["config", "inventory", "provision", "sessions", "show", "done", "shutdown", "extend", "costs"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_importing_the_cli_does_not_import_django():
    code = "import shopper.cli, sys; assert 'django' not in sys.modules, 'django imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(cli.__file__).parents[1]
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(run, command):
    code, out, _ = run(*([command] if command else []), "--help")
    assert code == 0
    assert "usage: gpu-shopper" in out and "exit codes" in out


def test_bad_usage_exits_2_without_a_traceback(run):
    code, _, err = run("inventory", "--sort", "cheapest")
    assert code == 2 and "invalid choice" in err and "Traceback" not in err
    assert run()[0] == 2  # a command is required


def test_config_saves_url_and_token_0600_and_shows_the_token_masked(run, tmp_path):
    token = "abcd1234efgh5678ijkl9012"
    code, out, _ = run("config", "--url", "https://shopper.example.com/", "--token", token)
    assert code == 0
    path = tmp_path / "xdg" / "gpu-shopper" / "config.json"
    assert f"Saved to {path}" in out and token not in out
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert json.loads(path.read_text()) == {"url": "https://shopper.example.com", "token": token}

    code, out, _ = run("config")
    assert code == 0
    assert "https://shopper.example.com" in out and "abcd…9012" in out and token not in out
    assert "config file" in out

    run("config", "--url", "http://localhost:8000/api/v1")  # one setting at a time keeps the other
    assert json.loads(path.read_text()) == {"url": "http://localhost:8000", "token": token}
    assert mode(path) == 0o600


def test_config_defaults_to_dot_config_without_xdg(run, home, monkeypatch):
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert run("config", "--url", "http://shopper.test", "--token", "t" * 20)[0] == 0
    path = home / ".config" / "gpu-shopper" / "config.json"
    assert mode(path) == 0o600


def test_environment_overrides_the_config_file(run, monkeypatch):
    run("config", "--url", "http://saved.example", "--token", "saved-token-0000000000")
    monkeypatch.setenv(cli.ENV_URL, "http://from-env.example")
    code, out, _ = run("config")
    assert code == 0
    assert "http://from-env.example" in out and "environment (GPU_SHOPPER_URL)" in out
    assert "config file" in out.splitlines()[2]  # the token still comes from the file
    monkeypatch.setenv(cli.ENV_TOKEN, "env-token-1111111111")
    assert "env-…1111" in run("config")[1]


def test_a_bad_url_is_refused(run):
    code, _, err = run("config", "--url", "shopper.example.com")
    assert code == 2 and err.startswith("error: ") and "http://" in err


def test_missing_configuration_is_one_clear_line(run):
    code, out, err = run("sessions")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "gpu-shopper config" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv", [["inventory"], ["sessions"], ["show", "abc"], ["costs"]])
def test_an_unreachable_server_is_exit_4_with_one_line(run, monkeypatch, argv):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(cli.ENV_URL, url)
    monkeypatch.setenv(cli.ENV_TOKEN, "whatever-token")
    code, out, err = run(*argv)
    assert code == 4 and out == ""
    assert err.startswith(f"error: cannot reach the shopper at {url}: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.rstrip().endswith(": Connection refused")


def test_the_module_runs_as_a_program_and_never_prints_a_traceback(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        cli.ENV_URL: f"http://127.0.0.1:{free_port()}",
        cli.ENV_TOKEN: "t",
    }
    result = subprocess.run(
        [sys.executable, "-m", "shopper.cli", "sessions"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(cli.__file__).parents[1],
        timeout=30,
    )
    assert result.returncode == 4 and result.stdout == ""
    assert result.stderr.startswith("error: cannot reach the shopper at") and result.stderr.count("\n") == 1


def test_the_console_script_is_declared():
    text = (Path(cli.__file__).parents[1] / "pyproject.toml").read_text()
    assert 'gpu-shopper = "shopper.cli:main"' in text
