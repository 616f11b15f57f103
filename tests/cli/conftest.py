"""The CLI in-process against a live server: pytest-django's ``live_server`` serves the real app
over HTTP on a thread; the CLI's ``main`` talks to it with ``requests`` like it would to prod.

The provider is faked at the registry seam (tests/fakes.py, as in tests/sessions/test_api.py) and
The task queue (``SHOPPER_TASK_QUEUE``) records tasks instead of running them, so nothing provisions.
"""

from __future__ import annotations

import pytest

from shopper import cli
from shopper.models import ApiToken


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A fresh HOME and XDG_CONFIG_HOME, and no shopper settings from the developer's shell."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(cli.ENV_URL, raising=False)
    monkeypatch.delenv(cli.ENV_TOKEN, raising=False)
    return home


@pytest.fixture
def cloud(fake_cloud, enqueued):
    """The fake provider (tests/fakes.py) answers offer o-1 at $1.20/h; returns the tasks enqueued."""
    fake_cloud("clicloud", "CLI Cloud").add_offer("o-1", "1.2000", gpu_count=2)
    return enqueued


@pytest.fixture
def token(user):
    _, raw = ApiToken.issue(user=user, name="cli")
    return raw


@pytest.fixture
def shopper(live_server, token, monkeypatch, cloud):
    """The environment of a configured CLI pointing at the live server."""
    monkeypatch.setenv(cli.ENV_URL, live_server.url)
    monkeypatch.setenv(cli.ENV_TOKEN, token)
    return live_server


@pytest.fixture
def run(capsys):
    """run(*argv) -> (exit code, stdout, stderr)."""

    def run(*argv: str):
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def offer(make_offer):
    return make_offer(provider="clicloud", provider_offer_id="o-1", gpu_count=2, price_per_hour="1.2000")
