"""Issue 19 in a real browser (see conftest.py): an expired login on the rent form, "Done" with
a key never downloaded, and the page of a finished session, in the browser's time zone."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

LIVE_WAIT_MS = 90_000
SESSION_URL = re.compile(r".*/sessions/(?P<id>[0-9a-f-]{36})/$")


def cheapest_offer(stack) -> int:
    offers = stack.api("alice", "GET", "/api/v1/inventory", params={"sort": "price"})
    assert offers.status_code == 200, offers.text
    return offers.json()["results"][0]["id"]


def badge(page):
    return page.locator(".rental-status .status-head .badge")


@pytest.fixture
def tokyo_page(browser, stack):
    """A fresh context whose browser says it is in Tokyo (UTC+9, no daylight saving)."""
    context = browser.new_context(
        base_url=stack.url, viewport={"width": 1280, "height": 900}, timezone_id="Asia/Tokyo"
    )
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def test_expired_login_on_the_rent_form_leads_to_the_login_page(page, stack, screenshot):
    offer_id = cheapest_offer(stack)
    before = stack.api("alice", "GET", "/api/v1/sessions").json()["count"]
    login(page, stack, "alice")
    page.goto(f"/offers/{offer_id}/rent/")
    expect(page.locator("#rent-form")).to_be_visible()
    page.evaluate("window.__samePage = true")

    # The login expires while the form is open (the session cookie is gone), then she submits.
    page.context.clear_cookies(name="sessionid")
    page.locator("#rent-form button[type=submit]").click()

    # A whole-page navigation to the login page, which sends her back to the rent page, not to
    # a fragment; never the login form swapped inside the rent form.
    page.wait_for_url(re.compile(rf".*/login/\?next=/offers/{offer_id}/rent/$"))
    assert page.evaluate("window.__samePage === undefined"), "the login page was swapped into the old page"
    expect(page.locator("#rent-form")).to_have_count(0)
    expect(page.locator("h1")).to_have_text("Log in")
    screenshot(page, "first-hour-login-expired")
    login(page, stack, "alice", here=True)
    page.wait_for_url(re.compile(rf".*/offers/{offer_id}/rent/$"))
    # Nothing was rented by the refused submit.
    assert stack.api("alice", "GET", "/api/v1/sessions").json()["count"] == before


def test_done_asks_for_an_undownloaded_key_and_the_ended_page_shows_duration_and_total(
    tokyo_page, stack, screenshot
):
    page = tokyo_page
    offer_id = cheapest_offer(stack)
    login(page, stack, "alice")
    page.goto(f"/offers/{offer_id}/rent/")
    page.fill("input[name=reservation_hours]", "1")
    page.get_by_label(re.compile("Generate a new key pair", re.IGNORECASE)).check()
    page.locator("#rent-form button[type=submit]").click()
    page.wait_for_url(SESSION_URL)
    rental_id = SESSION_URL.match(page.url)["id"]
    try:
        expect(badge(page)).to_have_text(re.compile(r"^\s*Active\s*$"), timeout=LIVE_WAIT_MS)

        # "Done" without having downloaded the key: she is asked, and told the key goes away.
        questions = []

        def dismiss(dialog):
            questions.append(dialog.message)
            dialog.dismiss()

        page.once("dialog", dismiss)
        page.get_by_role("button", name=re.compile("Done")).click()
        expect(page.get_by_role("button", name=re.compile("Done"))).to_be_visible()
        assert len(questions) == 1, questions
        assert "not downloaded" in questions[0] and "deleted" in questions[0], questions
        assert stack.session("alice", rental_id)["status"] == "active"  # dismissing kept it running

        # Asked again, she confirms: it shuts down.
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name=re.compile("Done")).click()
        expect(badge(page)).to_have_text(re.compile(r"^\s*Destroyed\s*$"), timeout=LIVE_WAIT_MS)
    finally:
        stack.api("alice", "DELETE", f"/api/v1/sessions/{rental_id}")
    final = stack.wait_status("alice", rental_id, {"destroyed"})

    # The ended page (reloaded, and as the live update left it): how long it ran, the total and
    # when it ended, in Tokyo time (UTC+9) with UTC on hover; nothing live.
    for reload in (False, True):
        if reload:
            page.reload()
        facts = page.locator(".rental-status dl.ended-facts")
        ran = re.compile(r"^(< 1 min|\d+ min|\d+ h \d\d min) from ")
        expect(facts.locator("dd[data-ran]")).to_have_text(ran)
        expect(facts.locator("dd[data-total]")).to_contain_text(re.compile(r"(\$\d+\.\d{2}|< \$0\.01)"))
        ended = facts.locator("dd[data-ended] time")
        expect(ended).to_contain_text(" UTC+9")
        utc = final["ended_at"][:16].replace("T", " ")
        expect(ended).to_have_attribute("title", f"{utc} UTC")
        status = page.locator(".rental-status")
        for live_only in ("Cost so far", "Reservation ends", "Last heartbeat"):
            expect(status).not_to_contain_text(live_only)
    # The server itself (Daphne, the async middleware path) wrote them in Tokyo time, from the
    # tz cookie the login page's script set.
    served = page.request.get(f"/sessions/{rental_id}/").text()
    assert 'data-zone="Asia/Tokyo"' in served and " UTC+9</time>" in served
    screenshot(page, "first-hour-ended-session")
