"""The product as people use it, in a real browser against real processes (see conftest.py).

The session page may refresh its status by websocket or by its own HTMX polling: the tests only
watch the DOM, never reload, and check that no navigation happened while they waited.
"""

from __future__ import annotations

import os
import re
import subprocess
import warnings

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

LIVE_WAIT_MS = 90_000
SESSION_URL = re.compile(r".*/sessions/(?P<id>[0-9a-f-]{36})/$")
NOT_YET_ACTIVE = re.compile(r"^\s*(Pending|Provisioning|Booting|Verifying)\s*$", re.IGNORECASE)
MONEY = re.compile(r"\$\d+\.\d{2}")


def mark_no_reload(page) -> None:
    """A flag on window: it survives htmx swaps and websocket pushes, not a reload."""
    page.evaluate("window.__noReload = 'still-the-same-document'")


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__noReload") == "still-the-same-document", "the page was reloaded"


def badge(page):
    return page.locator(".rental-status .status-head .badge")


@pytest.mark.parametrize("updates", ["as-shipped", "polling-only"])
def test_new_user_rents_connects_and_shuts_down(page, stack, screenshot, tmp_path, updates):
    """``as-shipped``: whatever the page uses (websocket when it has one, else polling).
    ``polling-only``: the browser has no WebSocket, so only the page's HTMX polling is left."""
    if updates == "polling-only":
        page.add_init_script("delete window.WebSocket")
        screenshot = lambda *args: None  # noqa: E731 -- one set of screenshots is enough
    page.goto("/offers/")
    page.wait_for_url(re.compile(r".*/login/\?next=/offers/$"))  # not logged in yet
    screenshot(page, "login")
    login(page, stack, "alice", here=True)

    # Offers (where the login sent her back): typing in the GPU filter shrinks the table in place.
    page.wait_for_url(re.compile(r".*/offers/$"))
    count = page.locator("#offer-results .results-head strong")
    rows = page.locator("#offer-results table.offers tbody tr")
    expect(rows.first).to_be_visible()
    all_text = count.inner_text()
    all_count = int(all_text.replace(",", ""))
    screenshot(page, "offers")
    page.fill("#offer-filters input[type=text][name=gpu]", "4090")
    expect(count).not_to_have_text(all_text, timeout=10_000)
    filtered = int(count.inner_text().replace(",", ""))
    assert 0 < filtered < all_count
    expect(page).to_have_url(re.compile(r"[?&]gpu=4090"))
    gpu_cells = page.locator("#offer-results table.offers tbody td.gpu").all_inner_texts()
    assert gpu_cells and all("4090" in cell for cell in gpu_cells), gpu_cells
    screenshot(page, "offers-filtered")

    # Rent the first row with a freshly generated key pair.
    gpu_type = gpu_cells[0]
    rows.first.get_by_role("link", name="Rent").click()
    page.wait_for_url(re.compile(r".*/offers/\d+/rent/$"))
    expect(page.locator("h1")).to_contain_text(gpu_type)
    page.fill("input[name=reservation_hours]", "1")
    # The estimate follows the hours (debounced htmx request): 1 h at the offer's price.
    expect(page.locator("#rent-estimate")).to_contain_text(re.compile(r"(^|\s)1 h ×"))
    expect(page.locator("#rent-estimate strong")).to_have_text(MONEY)
    page.get_by_label(re.compile("Generate a new key pair", re.IGNORECASE)).check()
    screenshot(page, "rent")
    page.locator("#rent-form button[type=submit]").click()
    page.wait_for_url(SESSION_URL)
    rental_id = SESSION_URL.match(page.url)["id"]

    # The status moves on its own, without a reload, to Active.
    mark_no_reload(page)
    expect(badge(page)).to_have_text(NOT_YET_ACTIVE)
    expect(badge(page)).to_have_text(re.compile(r"^\s*Active\s*$"), timeout=LIVE_WAIT_MS)
    assert_not_reloaded(page)
    live = page.evaluate("Boolean(window.shopperLive && window.shopperLive.connected)")
    print(f"[{updates}] the session page was updated by {'websocket' if live else 'HTMX polling'}")
    if updates == "polling-only":
        assert not live
    ssh_code = page.locator(f"code#rental-{rental_id}-ssh")
    expect(ssh_code).to_be_visible()
    command = ssh_code.inner_text().strip()
    match = re.fullmatch(r"ssh -i \S+ -p (?P<port>\d+) (?P<user>[^@\s]+)@(?P<host>\S+)", command)
    assert match, command
    screenshot(page, "session-active")

    # The private key through the page's link, then a real OpenSSH login with it.
    with page.expect_download() as download_info:
        page.get_by_role("link", name=re.compile("Download private key")).click()
    download = download_info.value
    key_file = tmp_path / download.suggested_filename
    download.save_as(key_file)
    os.chmod(key_file, 0o600)
    assert "PRIVATE KEY" in key_file.read_text()
    login_run = subprocess.run(
        ["ssh", "-i", str(key_file), "-p", match["port"], "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
         "-o", "IdentitiesOnly=yes", f"{match['user']}@{match['host']}", "nvidia-smi"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert login_run.returncode == 0, login_run.stderr
    assert "NVIDIA" in login_run.stdout, login_run.stdout
    assert "4090" in login_run.stdout, login_run.stdout

    # Done: the page follows the teardown to Destroyed, still without a reload.
    page.get_by_role("button", name=re.compile("Done")).click()
    expect(badge(page)).to_have_text(re.compile(r"^\s*(Stopping|Destroyed)\s*$"), timeout=15_000)
    expect(badge(page)).to_have_text(re.compile(r"^\s*Destroyed\s*$"), timeout=LIVE_WAIT_MS)
    assert_not_reloaded(page)
    cost = page.locator(".rental-status dl.facts dt:has-text('Cost') + dd")
    expect(cost).to_have_text(re.compile(r"\$\d+\.\d{2}"))
    expect(page.get_by_role("link", name=re.compile("Download private key"))).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("Done"))).to_have_count(0)
    expect(page.locator(f"#rental-{rental_id}-timeline")).to_contain_text("destroyed")
    screenshot(page, "session-destroyed")
    final = stack.session("alice", rental_id)
    assert final["status"] == "destroyed", final
    instance = str(final["provider_instance_id"])
    assert instance not in [str(i.get("id")) for i in stack.sandbox.instances()]

    # Costs and the sessions list show it.
    page.goto("/costs/")
    row = page.locator(f"a[href='/sessions/{rental_id}/']")
    expect(row).to_be_visible()
    expect(page.locator(".spend-table tbody tr", has=row).locator("td.price")).to_have_text(MONEY)
    screenshot(page, "costs")
    page.goto("/sessions/")
    link = page.locator(f"a[href='/sessions/{rental_id}/']")
    table_row = page.locator("#rental-table tbody tr", has=link)
    expect(table_row).to_be_visible()
    expect(table_row.locator(".badge")).to_have_text("Destroyed")
    expect(table_row.locator("td.num").last).to_have_text(MONEY)
    screenshot(page, "sessions-list")


def test_admin_extends_past_the_hard_maximum_with_a_reason(page, stack, screenshot):
    rental = stack.rent_for("alice")
    rental_id = rental["id"]
    before = stack.session("alice", rental_id)
    try:
        login(page, stack, "admin")
        page.goto(f"/sessions/{rental_id}/")
        expect(page.locator(".page-head")).to_contain_text("rented by alice")
        hard_max = page.locator(".rental-status dl.facts dt:has-text('Hard maximum') + dd")
        old_hard_max = hard_max.inner_text()
        extend = page.locator(f"#rental-{rental_id}-extend form")
        extend.locator("input[name=hours]").fill("20")
        reason = "The training run needs another day (browser test)"
        extend.locator("input[name=reason]").fill(reason)
        extend.get_by_role("button", name="Extend").click()
        page.wait_for_load_state()
        expect(page.locator(".messages")).to_contain_text("Extended")
        expect(hard_max).not_to_have_text(old_hard_max)
        timeline = page.locator(f"#rental-{rental_id}-timeline")
        override = timeline.locator("li.event-override")
        expect(override).to_contain_text(f"Hard maximum overridden by admin: {reason}")
        expect(override).to_contain_text("admin")
        after = stack.session("admin", rental_id)
        assert after["hard_max_at"] > before["hard_max_at"], (before, after)
        assert after["reservation_ends_at"] == after["hard_max_at"]
        # The page shows the API's new hard maximum (YYYY-MM-DD HH:MM).
        expect(hard_max).to_contain_text(after["hard_max_at"][:16].replace("T", " "))
        screenshot(page, "session-admin-override")

        # Nothing left behind: a force shutdown (it asks for confirmation first).
        page.once("dialog", lambda dialog: dialog.accept())
        mark_no_reload(page)
        page.get_by_role("button", name="Force shutdown").click()
        expect(badge(page)).to_have_text(re.compile(r"^\s*Destroyed\s*$"), timeout=LIVE_WAIT_MS)
        assert_not_reloaded(page)
        expect(timeline).to_contain_text("Force shutdown by admin")
    finally:
        stack.api("alice", "DELETE", f"/api/v1/sessions/{rental_id}")
    stack.wait_status("alice", rental_id, {"destroyed"})


WS_PROBE = """async ({path, waitMs}) => {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return await new Promise((resolve) => {
    const out = {opened: false, messages: [], code: null};
    const ws = new WebSocket(url.href);
    ws.onopen = () => { out.opened = true; };
    ws.onmessage = (e) => out.messages.push(e.data);
    ws.onclose = (e) => { out.code = e.code; resolve(out); };
    setTimeout(() => { ws.close(); resolve(out); }, waitMs);
  });
}"""

WS_LISTEN = """(path) => {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  window.__bobMessages = [];
  window.__bobSocket = new WebSocket(url.href);
  window.__bobSocket.onmessage = (e) => window.__bobMessages.push(e.data);
}"""


def test_another_user_cannot_see_or_touch_the_session(page, stack, screenshot):
    rental = stack.rent_for("alice")
    rental_id = rental["id"]
    try:
        login(page, stack, "bob")
        # Bob's own sessions socket, in a second tab, listening while alice's machine boots and
        # shuts down.
        listener = page.context.new_page()
        listener.goto("/sessions/")
        listener.evaluate(WS_LISTEN, "/ws/rentals/")
        page.goto("/sessions/")
        expect(page.locator(f"a[href='/sessions/{rental_id}/']")).to_have_count(0)
        screenshot(page, "sessions-list-other-user")

        # The page.
        response = page.goto(f"/sessions/{rental_id}/")
        assert response.status == 404
        screenshot(page, "session-404-other-user")
        assert rental["label"] not in page.content()
        for path in (f"/sessions/{rental_id}/ssh-key/", f"/api/v1/sessions/{rental_id}/ssh-key"):
            assert page.request.get(path).status == 404, path

        # The API with bob's session cookie.
        page.goto("/sessions/")
        assert page.request.get(f"/api/v1/sessions/{rental_id}").status == 404
        assert page.request.get(f"/api/v1/sessions/{rental_id}/events").status == 404
        listed = page.request.get("/api/v1/sessions").json()["results"]
        assert rental_id not in [s["id"] for s in listed]

        # Writes: refused without a CSRF token, and still 404 with bob's own valid token.
        assert page.request.post(f"/api/v1/sessions/{rental_id}/done").status in (403, 404)
        assert page.request.post(f"/sessions/{rental_id}/done/").status == 403
        csrf = page.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken']")
        headers = {"X-CSRFToken": csrf, "Referer": stack.url + "/sessions/"}
        assert page.request.post(f"/api/v1/sessions/{rental_id}/done", headers=headers).status == 404
        assert page.request.delete(f"/api/v1/sessions/{rental_id}", headers=headers).status == 404
        extend = page.request.post(
            f"/api/v1/sessions/{rental_id}/extend", headers=headers, data={"hours": 1, "reason": "x"}
        )
        assert extend.status == 404
        for action in ("done", "shutdown", "extend"):
            r = page.request.post(f"/sessions/{rental_id}/{action}/", headers=headers, form={"hours": "1"})
            assert r.status == 404, (action, r.status)
        assert stack.session("alice", rental_id)["status"] not in ("stopping", "destroyed", "failed")
        assert not [e for e in stack.api("alice", "GET", f"/api/v1/sessions/{rental_id}/events").json()
                    if e.get("actor") == "bob"]  # fmt: skip

        # The websocket: alice's session closes the socket with 4404 and sends nothing.
        own = page.evaluate(WS_PROBE, {"path": "/ws/rentals/", "waitMs": 3000})
        if not own["opened"]:
            warnings.warn(f"no websocket at /ws/rentals/ (closed {own['code']}): skipped", stacklevel=1)
        else:
            assert any('"hello"' in m for m in own["messages"]), own
            theirs = page.evaluate(WS_PROBE, {"path": f"/ws/rentals/?rental={rental_id}", "waitMs": 5000})
            # The consumer closes before accepting: Daphne rejects the handshake (HTTP 403), so the
            # browser sees 1006, not the consumer's 4404. Either way: never opened, nothing sent.
            assert theirs["code"] in (4404, 1006), theirs
            assert theirs["messages"] == [], theirs
            assert not theirs["opened"], theirs
    finally:
        stack.api("alice", "DELETE", f"/api/v1/sessions/{rental_id}")
    stack.wait_status("alice", rental_id, {"destroyed"})
    # Alice's whole lifecycle happened while bob's socket listened: none of it reached him.
    page.wait_for_timeout(1500)
    heard = listener.evaluate("window.__bobMessages")
    if own["opened"]:
        assert any('"hello"' in m for m in heard), heard  # it was connected all along
    assert not [m for m in heard if rental_id in m or rental["label"] in m], heard
