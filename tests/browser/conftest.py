"""Browser tests: real processes (sandbox cloud, web server, django-q2 worker, safety loop) on a
fresh SQLite file, driven through Debian's Chromium with Playwright.

The pytest process never touches that database: it talks to the stack over HTTP only (pages,
the API with tokens made by ``manage.py create_token``, the sandbox's admin API). Users and
tokens are made by ``manage.py`` subprocesses with the stack's environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from inventory.sandbox.testing import SandboxHandle, running_sandbox
from tools.chaos import ROOT, Procs, _free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
PASSWORDS = {"alice": "alice-pw-4242", "bob": "bob-pw-4242", "admin": "admin-pw-4242"}

CREATE_USERS = """
from django.contrib.auth import get_user_model
User = get_user_model()
User.objects.create_user("alice", "alice@example.com", "{alice}")
User.objects.create_user("bob", "bob@example.com", "{bob}")
User.objects.create_superuser("admin", "admin@example.com", "{admin}")
""".format(**PASSWORDS)


@dataclass
class Stack:
    url: str
    sandbox: SandboxHandle
    env: dict
    tmp: Path
    passwords: dict = field(default_factory=lambda: dict(PASSWORDS))
    tokens: dict = field(default_factory=dict)

    def api(self, who: str, method: str, path: str, **kwargs) -> requests.Response:
        """The REST API as ``who`` (token auth), e.g. stack.api("alice", "GET", "/api/v1/sessions")."""
        headers = {"Authorization": f"Token {self.tokens[who]}", **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def rent_for(self, who: str, hours: float = 1, **filters) -> dict:
        """Rent the cheapest visible offer for ``who`` through the API; the created session."""
        offers = self.api(who, "GET", "/api/v1/inventory", params={"sort": "price", **filters})
        assert offers.status_code == 200, offers.text
        for offer in offers.json()["results"][:5]:
            r = self.api(
                who, "POST", "/api/v1/sessions",
                json={"offer_id": offer["id"], "reservation_hours": hours, "generate_key": True},
            )  # fmt: skip
            if r.status_code == 201:
                return r.json()
        raise AssertionError(f"could not rent any offer: {r.status_code} {r.text}")

    def session(self, who: str, rental_id: str) -> dict:
        r = self.api(who, "GET", f"/api/v1/sessions/{rental_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, who: str, rental_id: str, statuses: set[str], timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            s = self.session(who, rental_id)
            if s["status"] in statuses or time.monotonic() > deadline:
                assert s["status"] in statuses, s
                return s
            time.sleep(0.5)

    def live_sessions(self) -> list[dict]:
        r = self.api("admin", "GET", "/api/v1/sessions", params={"page_size": 500})
        assert r.status_code == 200, r.text
        return [s for s in r.json()["results"] if s["status"] not in ("destroyed", "failed")]


def _manage(env: dict, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _wait_http(url: str, procs: Procs, log_dir: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procs.procs["web"].poll() is not None:
            break
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    log = (log_dir / "web.log").read_text(errors="replace")[-4000:]
    raise RuntimeError(f"the web server did not answer {url}; web.log:\n{log}")


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    tmp = Path(tempfile.mkdtemp(prefix="shopper-browser-"))
    web_port = _free_port()
    url = f"http://127.0.0.1:{web_port}"
    with running_sandbox(tmp, boot_delay=2) as sandbox:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="shopper.settings", PYTHONUNBUFFERED="1",
            DEBUG="False", SHOPPER_TESTING="True", SECRET_KEY="browser-secret-key-0123456789abcdefghijkl",
            DATABASE_URL=f"sqlite:///{tmp / 'browser.sqlite3'}",
            SHOPPER_FERNET_KEYS="8n7cyPbD0kqf9cJ0kQk3yqXKkXy7Gxh0o6lZ0xg3G2s=",
            SHOPPER_PUBLIC_URL=url, ALLOWED_HOSTS="127.0.0.1,localhost",
            Q_WORKERS="2", Q_SYNC="False", Q_TIMEOUT="300", CHANNEL_LAYER="memory", LOG_LEVEL="WARNING",
            PROVIDER_MIN_INTERVAL_SECONDS="0.05", PROVIDER_TIMEOUT_SECONDS="10",
            SHOPPER_POLL_INTERVAL_SECONDS="0.5", SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS="1",
            SHOPPER_CREATE_SETTLE_SECONDS="15", SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS="60",
            SHOPPER_BOOT_TIMEOUT_SECONDS="120", SHOPPER_TEARDOWN_BUDGET_SECONDS="60",
            SHOPPER_DESTROY_MAX_BACKOFF_SECONDS="2", SHOPPER_LIFECYCLE_INTERVAL_SECONDS="2",
            SHOPPER_RECONCILE_INTERVAL_SECONDS="5", SHOPPER_ORPHAN_GRACE_SECONDS="10",
            VASTAI_API_URL=sandbox.vastai_url, VASTAI_API_KEY="browser",
            TENSORDOCK_API_URL=sandbox.tensordock_url, TENSORDOCK_API_TOKEN="browser",
            SHOPPER_SANDBOX="True",
        )  # fmt: skip
        _manage(env, "migrate", "--noinput", "-v", "0")
        _manage(env, "refresh_offers")
        _manage(env, "shell", "-c", CREATE_USERS)
        tokens = {who: _manage(env, "create_token", who, "--name", "browser").strip() for who in PASSWORDS}
        procs = Procs(env, tmp, web_port)
        try:
            for name in ("web", "worker", "safety"):
                procs.start(name)
            _wait_http(f"{url}/login/", procs, tmp)
            st = Stack(url=url, sandbox=sandbox, env=env, tmp=tmp, tokens=tokens)
            yield st
            # Every machine the tests rented is torn down by the app itself, not by the reset.
            deadline = time.monotonic() + 90
            while (st.live_sessions() or sandbox.instances()) and time.monotonic() < deadline:
                time.sleep(1)
            live, left = st.live_sessions(), sandbox.instances()
        finally:
            procs.stop_all()
        assert live == [], f"sessions still live at the end: {live}"
        assert left == [], f"instances left in the sandbox: {left} (logs in {tmp})"


# Per module, not per session: while Playwright's sync API is open its event loop counts as
# running in this thread, and every later test on the same xdist worker that opens a database
# connection would fail with SynchronousOnlyOperation.
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, stack):
    """A fresh browser context (no cookies) per test, on the stack's URL."""
    context = browser.new_context(
        base_url=stack.url, viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    context.set_default_timeout(15_000)
    pg = context.new_page()
    yield pg
    context.close()


@pytest.fixture
def screenshot():
    """screenshot(page, "name") saves artifacts/screenshots/name.png (the whole page)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(pg, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        pg.screenshot(path=str(path), full_page=True)
        return path

    return take


def login(pg, stack: Stack, who: str, *, here: bool = False) -> None:
    """Log in through the form (``here``: the login page is already open, e.g. after a redirect)."""
    if not here:
        pg.goto("/login/")
    pg.fill("input[name=username]", who)
    pg.fill("input[name=password]", stack.passwords[who])
    pg.get_by_role("button", name="Log in").click()
    pg.wait_for_url(lambda u: "/login/" not in u)
