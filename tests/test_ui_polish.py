"""Small display rules shared by the pages: money under a cent, ages, unit headers, the sort box."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import time_machine
from django.contrib.staticfiles import finders
from django.template import Context, Template

from sessions.models import Status
from shopper.templatetags.shopper_format import ago, money
from tests.factories import RentalFactory

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


# --------------------------------------------------------------------------------------------
# money
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("amount", "billed", "shown"),
    [
        (Decimal("12.34"), None, "$12.34"),
        (Decimal("0.01"), None, "$0.01"),
        (Decimal("0.004"), None, "< $0.01"),  # unrounded: positive but under a cent
        (Decimal("0.000001"), None, "< $0.01"),
        (Decimal("0.00"), 8, "< $0.01"),  # rounded to 0.00 after 8 billed seconds
        (Decimal("0.00"), 0, "$0.00"),  # never billed: nothing was charged
        (Decimal("0"), None, "$0.00"),
        (Decimal("1.005"), None, "$1.01"),  # half up, as costs.services.cents rounds
        ("2.5", None, "$2.50"),
        (None, None, ""),
    ],
)
def test_money_says_under_a_cent_instead_of_zero(amount, billed, shown):
    assert money(amount, billed) == shown


def test_money_is_a_template_filter():
    template = Template("{% load shopper_format %}{{ a|money }} / {{ b|money:seconds }}")
    assert template.render(Context({"a": Decimal("3"), "b": Decimal("0.00"), "seconds": 5})) == (
        "$3.00 / &lt; $0.01"
    )


# --------------------------------------------------------------------------------------------
# ago
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("age", "shown"),
    [
        (timedelta(seconds=0), "just now"),
        (timedelta(seconds=59), "just now"),
        (timedelta(seconds=-5), "just now"),  # another machine's clock slightly ahead
        (timedelta(seconds=60), "1 min ago"),
        (timedelta(minutes=3, seconds=50), "3 min ago"),
        (timedelta(minutes=59, seconds=59), "59 min ago"),
        (timedelta(hours=2, minutes=3), "2 h ago"),
        (timedelta(days=3, hours=5), "3 d ago"),
    ],
)
def test_ago_reads_naturally(age, shown):
    with time_machine.travel(NOW, tick=False):
        assert ago(NOW - age) == shown


def test_ago_takes_the_pages_now_and_ignores_a_missing_time():
    assert ago(NOW - timedelta(minutes=5), NOW) == "5 min ago"
    assert ago(None) == ""


# --------------------------------------------------------------------------------------------
# The pages
# --------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_session_a_few_seconds_old_shows_just_now_and_under_a_cent(client, user):
    with time_machine.travel(NOW, tick=False):
        rental = RentalFactory(
            consumer=user,
            now=NOW,
            price_per_hour=Decimal("0.3500"),
            active_since=NOW - timedelta(seconds=8),
            last_heartbeat_at=NOW - timedelta(seconds=20),
        )
        assert rental.cost_so_far() == Decimal("0.00")  # the stored figure stays exact to the cent
        client.force_login(user)
        html = client.get(f"/sessions/{rental.pk}/").content.decode()
        listing = client.get("/sessions/").content.decode()
        dashboard = client.get("/").content.decode()
    assert re.search(r"<dt>Last heartbeat</dt><dd>just now\b", html)
    assert "minutes ago" not in html
    assert "<strong>&lt; $0.01</strong>" in html and "$0.00" not in html
    assert '<td class="num">&lt; $0.01</td>' in listing
    assert '<td class="num">&lt; $0.01</td>' in dashboard


@pytest.mark.django_db
def test_a_session_never_billed_still_shows_zero(client, user):
    rental = RentalFactory(consumer=user, status=Status.BOOTING)
    client.force_login(user)
    html = client.get(f"/sessions/{rental.pk}/").content.decode()
    assert "<strong>$0.00</strong>" in html and "&lt; $0.01" not in html


@pytest.mark.django_db
def test_the_costs_page_row_of_a_few_seconds_session_is_under_a_cent(client, user):
    with time_machine.travel(NOW, tick=False):
        rental = RentalFactory(
            consumer=user,
            now=NOW,
            status=Status.DESTROYED,
            active_since=NOW - timedelta(minutes=10),
            ended_at=NOW - timedelta(minutes=10) + timedelta(seconds=4),
        )
        client.force_login(user)
        html = client.get("/costs/").content.decode()
    row = re.search(rf'<tr data-rental="{rental.pk}">.*?</tr>', html, re.S)
    assert row and '<td class="num price">&lt; $0.01</td>' in row.group(0)


@pytest.mark.django_db
def test_the_safety_console_shows_ages_and_the_kill_switch(client, staff, user):
    with time_machine.travel(NOW, tick=False):
        RentalFactory(consumer=user, now=NOW, last_heartbeat_at=NOW - timedelta(seconds=30))
        RentalFactory(
            consumer=user,
            now=NOW,
            status=Status.STOPPING,
            last_heartbeat_at=NOW - timedelta(hours=2, minutes=3),
            stop_requested_at=NOW - timedelta(minutes=3),
        )
        client.force_login(staff)
        html = client.get("/safety/").content.decode()
    assert '<td class="nowrap">just now</td>' in html
    assert '<td class="nowrap">2 h ago</td>' in html
    assert "requested 3 min ago" in html
    assert "minutes ago" not in html and "0 minutes" not in html
    title = re.search(r"<title>(.*?)</title>", html, re.S).group(1)
    assert title == "Safety · GPU Shopper"
    main = html[html.index("<main") :]
    assert 'action="/safety/kill-switch/"' in main  # the kill switch is on the page, not in <title>


@pytest.mark.django_db
def test_unit_headers_keep_their_case(client_logged_in, make_offer):
    make_offer()
    html = client_logged_in.get("/offers/").content.decode()
    # A sortable header holds its label in a link (the sort): the class is on the <th>.
    unit_headers = re.findall(r"<th([^>]*)>(?:<a [^>]*>)?\$/[^<]*(?:</a>)?</th>", html)
    assert len(unit_headers) == 3  # $/h, $/GPU·h, $/TFLOP·h
    assert all("keep-case" in attrs for attrs in unit_headers)
    css = Path(finders.find("css/app.css")).read_text()
    assert re.search(r"\.table th\.keep-case\s*\{\s*text-transform:\s*none;", css)


# --------------------------------------------------------------------------------------------
# In Chromium: what a user actually sees
# --------------------------------------------------------------------------------------------
@pytest.mark.browser
@pytest.mark.django_db
def test_offers_page_in_chromium_reads_dollars_per_hour_and_the_whole_sort_choice(
    client_logged_in, make_offer
):
    from playwright.sync_api import sync_playwright

    make_offer()
    html = client_logged_in.get("/offers/").content.decode()
    css = Path(finders.find("css/app.css")).read_text()
    html = re.sub(r'<link rel="stylesheet"[^>]*>', lambda _: f"<style>{css}</style>", html)
    html = re.sub(r"<script[^>]*></script>", "", html)  # no server here: htmx is not needed

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_content(html)
            headers = page.eval_on_selector_all("table.offers th", "ths => ths.map(th => th.innerText)")
            # Width the sort box needs: its longest choice in its own font, plus padding and arrow.
            fit = page.eval_on_selector(
                "select[name=sort]",
                """select => {
                    const style = getComputedStyle(select);
                    const probe = document.createElement("span");
                    probe.style.font = style.font;
                    probe.style.whiteSpace = "pre";
                    document.body.append(probe);
                    let widest = 0;
                    for (const option of select.options) {
                        probe.textContent = option.text;
                        widest = Math.max(widest, probe.getBoundingClientRect().width);
                    }
                    const padding = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
                    return {needed: widest + padding + 20, width: select.clientWidth};
                }""",
            )
        finally:
            browser.close()
    assert "$/h" in headers and "$/GPU·h" in headers
    assert "LOCATION" in headers  # the other headers are still uppercased: the CSS did load
    assert fit["width"] >= fit["needed"], fit
