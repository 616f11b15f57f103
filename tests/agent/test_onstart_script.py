"""The node's start-up script (sessions/onstart.sh) as the providers run it, checked by shellcheck."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sessions.onstart import agent_onstart, user_startup

SHELLCHECK = shutil.which("shellcheck")
needs_shellcheck = pytest.mark.skipif(
    SHELLCHECK is None, reason="shellcheck is not installed (make browser-deps installs it)"
)


def shellcheck(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SHELLCHECK, "--shell=bash", "--severity=info", "-"],
        input=script, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@needs_shellcheck
def test_the_agent_start_up_script_passes_shellcheck():
    result = shellcheck(agent_onstart())
    assert result.returncode == 0, result.stdout


@needs_shellcheck
def test_the_whole_script_with_a_user_command_passes_shellcheck():
    script = user_startup("python3 -m http.server 8080 'it''s'; exit 3") + agent_onstart()
    result = shellcheck(script)
    assert result.returncode == 0, result.stdout


@needs_shellcheck
def test_shellcheck_would_catch_an_unquoted_variable():
    """The check is real: the unquoted expansion the script used to have is reported."""
    result = shellcheck('SETSID="$(command -v setsid || true)"\nnohup $SETSID sleep 1 &\n')
    assert result.returncode != 0 and "SC2086" in result.stdout


def test_the_script_is_the_file_read_as_is():
    script = agent_onstart()
    assert script.startswith("# Cloud GPU Shopper: start the node agent")
    assert '${SETSID:+"$SETSID"}' in script  # an empty SETSID adds no empty argument
