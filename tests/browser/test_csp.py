"""The Content-Security-Policy (shopper/csp.py) breaks no page: every main page, as a user and as
staff, loads and works in Chromium without one CSP violation in the console (an inline script,
style, handler or eval the policy refused would be reported there)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

# Reported by the page itself too: a violation fires "securitypolicyviolation" on the document.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " blocked " + (e.blockedURI || "inline"));
});
"""
CSP_WORDS = re.compile(r"Content Security Policy|CSP violation|Refused to", re.IGNORECASE)


def watch(page) -> list[str]:
    """Console messages about CSP from now on, and the policy header of every document answer."""
    violations: list[str] = []
    page.add_init_script(REPORT_VIOLATIONS)
    page.on("console", lambda m: violations.append(m.text) if CSP_WORDS.search(m.text) else None)
    page.on("pageerror", lambda exc: violations.append(str(exc)) if CSP_WORDS.search(str(exc)) else None)
    return violations


def visit(page, path: str) -> None:
    response = page.goto(path)
    assert response is not None and response.ok, (path, response and response.status)
    assert "default-src 'self'" in response.headers.get("content-security-policy", ""), path
    page.wait_for_load_state("networkidle")


def test_the_users_pages_work_without_a_csp_violation(page, stack):
    violations = watch(page)
    login(page, stack, "alice")

    visit(page, "/")
    visit(page, "/offers/")
    page.fill("#offer-filters input[type=text][name=gpu]", "4090")  # an htmx request
    page.wait_for_load_state("networkidle")
    offer = page.locator("#offer-results a[href$='/rent/']").first
    expect(offer).to_be_visible()
    offer.click()
    page.wait_for_url(re.compile(r".*/offers/\d+/rent/$"))
    page.fill("input[name=reservation_hours]", "1.5")  # the estimate, by htmx
    expect(page.locator("#rent-estimate")).to_contain_text("1.5")
    visit(page, "/sessions/")
    visit(page, "/keys/")
    visit(page, "/costs/")
    page.select_option("select[name=period]", "last_month")  # htmx swaps the summary
    page.wait_for_url(re.compile(r".*period=last_month"))
    page.select_option("select[name=period]", "custom")  # waits for the dates: no request
    page.wait_for_load_state("networkidle")
    assert "period=last_month" in page.url
    visit(page, "/tokens/")
    page.fill("input[name=name]", "csp-check")
    page.get_by_role("button", name=re.compile("Create")).click()
    copy = page.locator("button[data-copy='#new-token-key']")
    copy.click()
    expect(copy).to_have_text(re.compile("Copied|Press Ctrl"))

    assert violations == []


def test_a_session_page_and_the_staff_pages_work_without_a_csp_violation(page, stack):
    rental = stack.rent_for("admin", hours=1)
    violations = watch(page)
    login(page, stack, "admin")
    try:
        visit(page, f"/sessions/{rental['id']}/")
        stack.wait_status("admin", rental["id"], {"active"})
        expect(page.locator(f"code#rental-{rental['id']}-ssh")).to_be_visible(timeout=30_000)  # live update
        copy = page.locator(f"button[data-copy='#rental-{rental['id']}-ssh']")
        # A live update may re-render the block (and its button) just after the click: click again.
        for attempt in range(3):
            copy.click()
            try:
                expect(copy).to_have_text(re.compile("Copied|Press Ctrl"), timeout=5_000)
                break
            except AssertionError:
                if attempt == 2:
                    raise
    finally:
        stack.api("admin", "POST", f"/api/v1/sessions/{rental['id']}/done")
    visit(page, "/safety/")
    visit(page, "/audit/")
    visit(page, "/costs/?period=custom&from=2025-01-01")
    visit(page, "/admin/")
    visit(page, "/admin/rentals/rental/")
    visit(page, f"/admin/rentals/rental/{rental['id']}/change/")
    visit(page, "/api/v1/docs/")
    expect(page.locator("#swagger-ui .info .title")).to_contain_text("Cloud GPU Shopper API")

    assert violations == []
