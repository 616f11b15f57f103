"""Issue 19 "at rent time" in a real browser against real processes: rent a Vast.ai offer with
the vLLM preset (its inference port 8000 exposed), see the port as the sandbox mapped it, as a
link that answers, and the page say when the server's health check answered."""

from __future__ import annotations

import re

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import _manage, login

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SESSION_URL = re.compile(r".*/sessions/(?P<id>[0-9a-f-]{36})/$")


def test_rent_with_a_preset_image_and_an_exposed_port_and_follow_its_link(page, stack, screenshot):
    offers = stack.api("alice", "GET", "/api/v1/inventory", params={"provider": "vastai", "sort": "price"})
    offer = offers.json()["results"][0]
    login(page, stack, "alice")
    page.goto(f"/offers/{offer['id']}/rent/")

    # The presets say what they contain; the vLLM one exposes its inference port.
    expect(page.locator("#rent-form")).to_contain_text("OpenAI-compatible API on port 8000")
    page.locator("#id_preset_vllm").check()
    page.fill("input[name=reservation_hours]", "1")
    page.fill("#id_disk_gb", "20")
    # The estimate follows the disk: the price at 20 GB, the same figure the budget reserves.
    expect(page.locator("#rent-estimate")).to_contain_text("with 20 GB disk")
    price = re.search(r"× (\$\d+\.\d{4}/h)", page.locator("#rent-estimate").inner_text())[1]
    expect(page.locator("#rent-price")).to_have_text(price)
    page.get_by_label(re.compile("Generate a new key pair", re.IGNORECASE)).check()
    screenshot(page, "rent-choices")
    page.locator("#rent-form button[type=submit]").click()
    page.wait_for_url(SESSION_URL)
    rental_id = SESSION_URL.match(page.url)["id"]

    ports = page.locator(f"#rental-{rental_id}-ports")
    expect(ports).to_contain_text("mapped once the machine is ready")
    link = ports.locator("a.port-link")
    expect(link).to_have_count(1, timeout=90_000)
    address = link.inner_text().strip()
    port = address.rsplit(":", 1)[1]
    assert port != "8000"  # the host port is Vast's choice, not the container's
    assert link.get_attribute("href") == f"http://{address}/"
    expect(ports).to_contain_text("Port 8000")
    # The link reaches the machine's server (the sandbox's image serves the mapped port).
    assert requests.get(f"http://{address}/health", timeout=5).status_code == 200
    # The minute job (shopper/schedules.py "sessions.health_checks"; this stack runs no scheduler)
    # asks the health check; the open page then says the server answers, without a reload.
    _manage(stack.env, "shell", "-c", "from sessions.tasks import health_checks; print(health_checks())")
    expect(ports.locator(".health")).to_contain_text("answered", timeout=30_000)
    screenshot(page, "session-ports")

    session = stack.session("alice", rental_id)
    assert session["ports"] == [{"port": 8000, "address": address, "url": f"http://{address}/"}]
    assert (session["preset"], session["image"], session["disk_gb"]) == (
        "vllm",
        "vllm/vllm-openai:v0.6.6",
        20,
    )
    stack.api("alice", "POST", f"/api/v1/sessions/{rental_id}/done")
    stack.wait_status("alice", rental_id, {"destroyed"})
    # Once finished: "Rent again" opens the rent page of a comparable offer with the same choices.
    page.goto(f"/sessions/{rental_id}/")
    page.get_by_role("link", name="Rent again").click()
    page.wait_for_url(re.compile(rf".*/sessions/{rental_id}/rent-again/$"))
    expect(page.locator("#rent-form")).to_have_attribute("action", re.compile(r"^/offers/\d+/rent/$"))
    expect(page.locator("#id_preset_vllm")).to_be_checked()
    expect(page.locator("#id_disk_gb")).to_have_value("20")
