"""Issue 18 in a real browser (see conftest.py): the offers page sorted by its headers, filtered
by CUDA and several GPU models, back/forward keeping results and form in step, a refused value
shown on its field, and the phone layout at 390 px."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def open_offers(page, stack):
    login(page, stack, "alice")
    page.goto("/offers/")
    expect(page.locator("#offer-results table.offers tbody tr").first).to_be_visible()


def count(page) -> int:
    return int(page.locator("#offer-results .results-head strong").inner_text().replace(",", ""))


def prices(page) -> list[Decimal]:
    cells = page.locator("#offer-results td.price").all_inner_texts()
    return [Decimal(c.strip().lstrip("$")) for c in cells]


def version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def test_sort_by_clicking_a_header_and_by_keyboard(page, stack):
    open_offers(page, stack)
    price = page.locator("#offer-results th", has=page.locator("a.sort", has_text="$/h"))
    expect(price).to_have_attribute("aria-sort", "ascending")  # the default sort
    assert prices(page) == sorted(prices(page))

    price.locator("a.sort").click()
    expect(page).to_have_url(re.compile(r"[?&]sort=-price(&|$)"))
    price = page.locator("#offer-results th", has=page.locator("a.sort", has_text="$/h"))
    expect(price).to_have_attribute("aria-sort", "descending")
    assert prices(page) == sorted(prices(page), reverse=True)
    expect(page.locator("#offer-filters select[name=sort]")).to_have_value("-price")  # the form follows

    # Keyboard: the header is a link, reached and followed without a mouse.
    page.locator("#offer-results th a.sort", has_text="GPUs").focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"[?&]sort=-gpu_count(&|$)"))
    gpus = page.locator("#offer-results th", has=page.locator("a.sort", has_text="GPUs"))
    expect(gpus).to_have_attribute("aria-sort", "descending")
    counts = [int(c) for c in page.locator("#offer-results td.gpus").all_inner_texts()]
    assert counts == sorted(counts, reverse=True)
    expect(page.locator("#offer-results th[aria-sort]")).to_have_count(1)


def test_filter_by_cuda_and_several_gpu_models(page, stack):
    open_offers(page, stack)
    page.locator("#offer-filters details.gpu-models summary").click()
    boxes = page.locator("#offer-filters input[type=checkbox][name=gpu]")
    picked = [boxes.nth(0).get_attribute("value"), boxes.nth(1).get_attribute("value")]
    boxes.nth(0).check()
    expect(page).to_have_url(re.compile(r"[?&]gpu="))
    boxes.nth(1).check()
    expect(page).to_have_url(re.compile(r"gpu=[^&]+&gpu=[^&]+"))
    page.fill("#f-min_cuda", "12.4")
    expect(page).to_have_url(re.compile(r"[?&]min_cuda=12.4"))
    expect(page.locator("#offer-results .results-head")).to_be_visible()

    gpus = page.locator("#offer-results td.gpu").all_inner_texts()
    assert gpus and set(gpus) <= set(picked), (gpus, picked)
    cudas = [
        c.split("·")[0].strip() for c in page.locator("#offer-results tbody tr td.cuda").all_inner_texts()
    ]
    assert cudas and all(version(c) >= (12, 4) for c in cudas), cudas
    # The API agrees: the same filters, the same count.
    api = stack.api("alice", "GET", "/api/v1/inventory", params={"gpu": picked, "min_cuda": "12.4"})
    assert api.json()["count"] == count(page)


def test_back_and_forward_keep_results_and_form_in_step(page, stack):
    open_offers(page, stack)
    everything = count(page)
    page.fill("#offer-filters input[type=text][name=gpu]", "4090")
    expect(page).to_have_url(re.compile(r"[?&]gpu=4090"))
    expect(page.locator("#offer-results .results-head strong")).not_to_have_text(f"{everything:,}")
    only_4090 = count(page)
    page.fill("#f-min_gpus", "2")
    expect(page).to_have_url(re.compile(r"[?&]min_gpus=2"))
    expect(page.locator("#offer-results .results-head strong")).not_to_have_text(f"{only_4090:,}")
    several = count(page)
    assert several < only_4090 < everything

    page.go_back()
    expect(page).not_to_have_url(re.compile(r"min_gpus"))
    expect(page.locator("#f-min_gpus")).to_have_value("")
    expect(page.locator("#offer-filters input[type=text][name=gpu]")).to_have_value("4090")
    expect(page.locator("#offer-results .results-head strong")).to_have_text(f"{only_4090:,}")

    page.go_back()
    expect(page.locator("#offer-filters input[type=text][name=gpu]")).to_have_value("")
    expect(page.locator("#offer-results .results-head strong")).to_have_text(f"{everything:,}")

    page.go_forward()
    page.go_forward()
    expect(page).to_have_url(re.compile(r"min_gpus=2"))
    expect(page.locator("#f-min_gpus")).to_have_value("2")
    expect(page.locator("#offer-filters input[type=text][name=gpu]")).to_have_value("4090")
    expect(page.locator("#offer-results .results-head strong")).to_have_text(f"{several:,}")


def test_a_refused_value_is_shown_on_its_field_and_the_results_say_so(page, stack):
    open_offers(page, stack)
    everything = count(page)
    page.fill("#f-min_gpus", "100")  # above the field's max: the browser refuses it
    field = page.locator("#f-min_gpus")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-min_gpus-error")).to_contain_text("Min GPUs:")
    expect(page.locator("#offer-results [role=alert]")).to_contain_text("Min GPUs")
    expect(page.locator("#offer-results [role=alert]")).to_contain_text("not applied")
    assert count(page) == everything  # not silently applied, not silently dropped

    # A CUDA version that is not one (pattern): the same, with its own label.
    page.fill("#f-min_cuda", "12.x")
    expect(page.locator("#f-min_cuda")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-min_cuda-error")).to_contain_text("Min CUDA:")
    expect(page.locator("#offer-results [role=alert]")).to_contain_text("Min CUDA")

    # Fixed: the marks go, the filter applies.
    page.fill("#f-min_gpus", "2")
    expect(page).to_have_url(re.compile(r"[?&]min_gpus=2"))
    expect(field).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-min_gpus-error")).to_have_text("")

    # A value the server refuses (a direct link: no browser check) is marked on its field too.
    page.goto("/offers/?min_disk_gb=lots")
    expect(page.locator("#f-min_disk_gb")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-min_disk_gb-error")).to_contain_text("Min disk (GB):")
    expect(page.locator("#offer-results [role=alert]")).to_contain_text("not applied")


def test_phone_layout_has_cards_no_horizontal_scroll_and_a_folded_nav(browser, stack, tmp_path):
    context = browser.new_context(base_url=stack.url, viewport={"width": 390, "height": 844})
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        open_offers(page, stack)
        width = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
        page.screenshot(path=str(tmp_path / "offers-phone.png"), full_page=True)
        assert width[0] <= width[1], width
        assert (tmp_path / "offers-phone.png").stat().st_size > 0

        # Offers are cards: GPU, price, value ($/TFLOP·h), location and Rent shown; the table head is not.
        first = page.locator("#offer-results tbody tr").first
        for cell in ("td.gpu", "td.price", "td.value", "td.loc", "td.rent"):
            expect(first.locator(cell)).to_be_visible()
        expect(first.locator("td.value")).to_contain_text("$")
        expect(first.locator("td.confidence")).to_be_hidden()
        expect(page.locator("#offer-results table.offers thead")).to_be_hidden()
        expect(first.locator("td.extra").first).to_be_hidden()

        # The navigation is behind a menu button.
        nav = page.locator("#site-nav")
        toggle = page.get_by_role("button", name="Menu")
        expect(nav).to_be_hidden()
        toggle.click()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        expect(nav.get_by_role("link", name="My sessions")).to_be_visible()
        width = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width
        page.screenshot(path=str(tmp_path / "offers-phone-menu.png"), full_page=True)
    finally:
        context.close()
