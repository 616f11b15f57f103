"""What must hold across requests must hold across web processes (issue 12): two Daphne processes
behind ``shopper.serve`` on one port (SO_REUSEPORT spreads the connections), a real sandbox
cloud, a fresh SQLite file. The pytest process only talks HTTP to them (and ``manage.py``).

Each request opens its own connection, so the kernel spreads them over both processes; with
per-process memory (the old cache token and counters) the second process granted everything again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from inventory.sandbox.testing import running_sandbox
from tools.chaos import ROOT, _free_port

pytestmark = pytest.mark.e2e

PASSWORDS = {"alice": "alice-pw-4242", "bob": "bob-pw-4242", "carol": "carol-pw-4242"}
LOGIN_ATTEMPTS = 5
API_PER_MINUTE = 12
CREATE_USERS = "\n".join(
    ["from django.contrib.auth import get_user_model", "User = get_user_model()"]
    + [f'User.objects.create_user("{who}", "{who}@example.com", "{pw}")' for who, pw in PASSWORDS.items()]
)
COUNT_RENTALS = "from sessions.models import Rental; print(Rental.objects.count())"


@dataclass
class Web:
    url: str
    env: dict
    tmp: Path
    tokens: dict

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def session(self) -> requests.Session:
        """A fresh browser-like client: its own cookies and its own connection."""
        s = requests.Session()
        s.headers["Connection"] = "close"
        return s

    def logged_in(self, who: str) -> requests.Session:
        s = self.session()
        r = login(self, s, who, PASSWORDS[who])
        assert r.status_code == 302, r.status_code
        return s


def csrf(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def login(web: Web, s: requests.Session, username: str, password: str) -> requests.Response:
    page = s.get(f"{web.url}/login/", timeout=30)
    return s.post(
        f"{web.url}/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": csrf(page.text)},
        allow_redirects=False,
        timeout=30,
    )


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    tmp = Path(tempfile.mkdtemp(prefix="shopper-xproc-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with running_sandbox(tmp) as sandbox:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="shopper.settings", PYTHONUNBUFFERED="1", DEBUG="False",
            SHOPPER_TESTING="True", SECRET_KEY="xproc-secret-key-0123456789abcdefghijklmnop",
            DATABASE_URL=f"sqlite:///{tmp / 'xproc.sqlite3'}",
            SHOPPER_FERNET_KEYS="8n7cyPbD0kqf9cJ0kQk3yqXKkXy7Gxh0o6lZ0xg3G2s=",
            SHOPPER_PUBLIC_URL=url, ALLOWED_HOSTS="127.0.0.1,localhost",
            # No worker runs: the rentals stay pending and no machine is started.
            Q_SYNC="False", CHANNEL_LAYER="memory", LOG_LEVEL="WARNING",
            PROVIDER_MIN_INTERVAL_SECONDS="0", PROVIDER_TIMEOUT_SECONDS="10",
            VASTAI_API_URL=sandbox.vastai_url, VASTAI_API_KEY="xproc",
            TENSORDOCK_API_URL=sandbox.tensordock_url, TENSORDOCK_API_TOKEN="xproc",
            LOGIN_THROTTLE_ATTEMPTS=str(LOGIN_ATTEMPTS), API_THROTTLE_USER=f"{API_PER_MINUTE}/min",
        )  # fmt: skip
        env.pop("REDIS_URL", None)  # the default cache is then per process (locmem)
        w = Web(url=url, env=env, tmp=tmp, tokens={})
        w.manage("migrate", "--noinput", "-v", "0")
        w.manage("refresh_offers")
        w.manage("shell", "-c", CREATE_USERS)
        w.tokens = {who: w.manage("create_token", who, "--name", "xproc").strip() for who in PASSWORDS}
        log = (tmp / "web.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "shopper.serve", "--port", str(port), "--workers", "2"],
            cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        try:
            wait_up(url, proc, tmp)
            yield w
        finally:
            proc.terminate()  # shopper.serve forwards it to its two children
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_up(url: str, proc: subprocess.Popen, tmp: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/login/", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError("web did not start:\n" + (tmp / "web.log").read_text(errors="replace")[-3000:])


def rentals(web: Web) -> str:
    return web.manage("shell", "-v", "0", "-c", COUNT_RENTALS).strip()


def concurrently(n: int, call) -> list:
    """``call(i)`` from n threads released together."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call(i)
        except Exception as exc:  # reported by the assertion below, with the exception itself
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_submits_of_one_rent_form_make_one_rental(web):
    alice = web.logged_in("alice")
    offers = requests.get(
        f"{web.url}/api/v1/inventory", params={"sort": "price"}, timeout=30,
        headers={"Authorization": f"Token {web.tokens['alice']}"},
    )  # fmt: skip
    assert offers.status_code == 200, offers.text
    offer_id = offers.json()["results"][0]["id"]
    page = alice.get(f"{web.url}/offers/{offer_id}/rent/", timeout=30)
    assert page.status_code == 200
    form = {
        "csrfmiddlewaretoken": csrf(page.text),
        "form_token": re.search(r'name="form_token" value="([^"]+)"', page.text).group(1),
        "expected_price": re.search(r'name="expected_price" value="([^"]+)"', page.text).group(1),
        "reservation_hours": "1",
        "key_source": "generate",
    }

    def submit(i: int) -> requests.Response:
        s = web.session()  # a connection of its own: the kernel picks the process
        s.cookies.update(alice.cookies)
        return s.post(f"{web.url}/offers/{offer_id}/rent/", data=form, allow_redirects=False, timeout=60)

    answers = concurrently(8, submit)
    assert all(isinstance(a, requests.Response) and a.status_code == 302 for a in answers), answers
    assert len({a.headers["Location"] for a in answers}) == 1
    assert rentals(web) == "1"
    # The same through the API, with an Idempotency-Key.
    body = {"offer_id": offer_id, "reservation_hours": 1, "generate_key": True}

    def post(i: int) -> requests.Response:
        return requests.post(
            f"{web.url}/api/v1/sessions", json=body, timeout=60,
            headers={"Authorization": f"Token {web.tokens['carol']}", "Idempotency-Key": "xproc-1",
                     "Connection": "close"},
        )  # fmt: skip

    answers = concurrently(4, post)
    assert all(isinstance(a, requests.Response) for a in answers), answers
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len({a.json()["ssh_private_key"] for a in answers}) == 1
    assert rentals(web) == "2"


def test_failed_logins_are_counted_across_processes_and_unicode_variants(web):
    def attempt(i: int) -> int:
        return login(web, web.session(), "bob", "wrong-password").status_code

    codes = [attempt(i) for i in range(3 * LOGIN_ATTEMPTS)]
    assert codes == [200] * LOGIN_ATTEMPTS + [429] * (2 * LOGIN_ATTEMPTS)
    # The right password under a fullwidth spelling (Django would log it in as bob) is refused too.
    assert login(web, web.session(), "ｂｏｂ", PASSWORDS["bob"]).status_code == 429
    # Concurrent guesses cannot squeeze past the limit either (carol: a fresh counter).
    codes = concurrently(3 * LOGIN_ATTEMPTS, lambda i: login(web, web.session(), "carol", "nope").status_code)
    assert sorted(codes) == [200] * LOGIN_ATTEMPTS + [429] * (2 * LOGIN_ATTEMPTS), codes


def test_the_api_limit_holds_across_processes(web):
    def call(i: int) -> int:
        return requests.get(
            f"{web.url}/api/v1/sessions", timeout=30,
            headers={"Authorization": f"Token {web.tokens['bob']}", "Connection": "close"},
        ).status_code  # fmt: skip

    codes = [call(i) for i in range(2 * API_PER_MINUTE)]
    assert codes == [200] * API_PER_MINUTE + [429] * API_PER_MINUTE
