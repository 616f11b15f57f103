"""Dates out of a sane range (issue 12, "Server errors found"): the costs API, page and CSV export
answered 500 (OverflowError) for 9999-12-31 or 0001-01-01 in UTC+5, and a 2,000-year custom
period drew 24,000 chart bars. Now a 400 (or a form message) naming the parameter, and a custom
period on the page is at most ten years."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
import time_machine

from costs.services import EARLIEST_DATE, LATEST_DATE

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 3, 15, 12, 0, tzinfo=UTC)
RANGE = f"Give a date between {EARLIEST_DATE:%Y-%m-%d} and {LATEST_DATE:%Y-%m-%d}."


@pytest.fixture(autouse=True)
def frozen_now():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.mark.parametrize(
    "params,name",
    [
        ({"to": "9999-12-31"}, "to"),
        ({"from": "0001-01-01T00:00:00+05:00"}, "from"),
        ({"to": "9999-12-31T23:59:59-05:00"}, "to"),
        ({"from": "0001-01-01"}, "from"),
        ({"from": "1999-12-31T23:59:59Z"}, "from"),
        ({"to": "2101-01-01"}, "to"),
        ({"from": "0001-01-01T00:00:00+05:00", "to": "9999-12-31T23:59:59-05:00"}, "from"),
    ],
)
def test_api_dates_out_of_range_are_a_400_naming_the_parameter(api_client, params, name):
    response = api_client.get("/api/v1/costs", params)

    assert response.status_code == 400, (response.status_code, response.content[:200])
    body = response.json()
    assert body["code"] == "invalid" and body["detail"].startswith(f"{name}: ")
    assert RANGE in body["detail"]


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2000-01-01", "to": "2100-12-31"},
        {"from": "2000-01-01T00:00:00+05:00", "to": "2100-12-31T23:59:59-05:00"},
        {"period": "day", "from": "2000-01-01"},
    ],
)
def test_api_dates_at_the_edges_of_the_range_work(api_client, params):
    response = api_client.get("/api/v1/costs", params)

    assert response.status_code == 200, response.json()
    assert response.json()["total"] == "0.00"


def bars(html: str) -> int:
    match = re.search(r'<svg[^>]*data-chart="time".*?</svg>', html, re.S)
    return len(re.findall(r'<rect class="bar"', match.group(0))) if match else 0


@pytest.mark.parametrize(
    "params,message",
    [
        ({"period": "custom", "from": "2020-01-01", "to": "9999-12-31"}, RANGE),
        ({"period": "custom", "from": "0001-01-01", "to": "2025-01-01"}, RANGE),
        ({"from": "1999-12-31"}, RANGE),
        (
            {"period": "custom", "from": "2000-01-01", "to": "2025-03-15"},
            "A custom period can be at most 10 years; pick a later start date.",
        ),
        (
            {"period": "custom", "from": "2005-01-01"},  # to today: 20 years
            "A custom period can be at most 10 years; pick a later start date.",
        ),
    ],
)
def test_page_and_export_refuse_out_of_range_and_overlong_periods(client, user, params, message):
    client.force_login(user)

    page = client.get("/costs/", params)
    export = client.get("/costs/export.csv", params)

    assert page.status_code == 200
    html = page.content.decode()
    assert message in html and "Can't show spend for these filters." in html
    assert bars(html) == 0 and len(html) < 200_000
    assert export.status_code == 400 and message in export.content.decode()


def test_page_a_long_but_allowed_period_has_a_bounded_chart(client, user, billed):
    """Nine years is allowed: one bar per month (108), not one per day."""
    billed(datetime(2024, 6, 1, 10, tzinfo=UTC), datetime(2024, 6, 1, 12, tzinfo=UTC))
    client.force_login(user)

    response = client.get("/costs/", {"period": "custom", "from": "2016-01-01", "to": "2024-12-31"})

    assert response.status_code == 200
    html = response.content.decode()
    assert "Can't show spend" not in html
    assert bars(html) == 12 * 9
    export = client.get("/costs/export.csv", {"period": "custom", "from": "2016-01-01", "to": "2024-12-31"})
    assert export.status_code == 200 and export.content.decode().count("\n") == 2
