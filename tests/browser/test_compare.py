"""Issue 18 "Compare GPUs" in a real browser against real processes: the compare page (in the
nav) ranks the sandbox's GPU models by value, and picking one opens the offers menu filtered to
that model, every offer on it that model."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_the_compare_page_opens_the_menu_filtered_to_a_model(page, stack, screenshot):
    login(page, stack, "alice")
    page.get_by_role("link", name="Compare GPUs").click()
    page.wait_for_url(re.compile(r".*/gpus/$"))
    rows = page.locator("#gpu-compare tbody tr")
    expect(rows.first).to_be_visible()
    # Ranked by value: $ per TFLOP-hour ascending (every sandbox GPU is in the spec table).
    cells = page.locator("#gpu-compare tbody td.value").all_inner_texts()
    figures = [Decimal(text.strip().lstrip("$")) for text in cells]
    assert len(figures) >= 10 and figures == sorted(figures)
    screenshot(page, "compare-gpus")

    row = rows.nth(1)
    model = row.get_attribute("data-gpu")
    offers = int(row.locator("td").nth(2).inner_text())
    row.locator("a.gpu-link").click()
    page.wait_for_url(re.compile(r".*/offers/\?gpu="))
    # The link's gpu=<name> is the menu's multi-model filter: the picker ticks exactly that model.
    expect(page.locator(f'#offer-filters input[type=checkbox][name=gpu][value="{model}"]')).to_be_checked()
    expect(page.locator("#offer-filters input[type=checkbox][name=gpu]:checked")).to_have_count(1)
    expect(page.locator("#f-gpu")).to_have_value("")
    expect(page.locator("#offer-results .results-head")).to_contain_text(f"{offers:,} offer")
    names = set(page.locator("#offer-results td.gpu").all_inner_texts())
    assert names == {model}
    # The value column is on the menu too.
    expect(page.locator("table.offers thead")).to_contain_text("$/TFLOP·h")
