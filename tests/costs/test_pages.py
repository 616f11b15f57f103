"""The costs page and CSV export: ownership, filters, charts, budgets and the budget banner.

Spend comes from LedgerEntry rows written directly: each test rental is destroyed and fully
written to the ledger (its last entry ends at ``ended_at``), so the summaries read exactly these
amounts and add nothing "not yet written".
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.cache import cache

from costs import services
from costs.models import Budget, LedgerEntry
from sessions.models import Rental, Status

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 3, 15, 12, 0, tzinfo=UTC)
URL = "/costs/"
CSV_URL = "/costs/export.csv"


@pytest.fixture(autouse=True)
def frozen_now():
    with time_machine.travel(NOW, tick=False):
        yield


def spend(user, amount, *, day=None, hours=2, gpu="RTX 4090 24GB", provider="vastai", provider_cost=None):
    """A destroyed rental of ``user`` that started on ``day`` at 10:00 and cost ``amount``."""
    start = (day or NOW).replace(hour=10, minute=0, second=0, microsecond=0)
    end = start + timedelta(hours=hours)
    amount = Decimal(amount)
    rental = Rental.objects.create(
        consumer=user,
        provider=provider,
        provider_offer_id="o-1",
        gpu_type=gpu,
        gpu_count=1,
        price_per_hour=amount / hours,
        status=Status.DESTROYED,
        created_at=start - timedelta(minutes=2),
        active_since=start,
        ended_at=end,
        reservation_ends_at=end,
        hard_max_at=start + timedelta(hours=12),
    )
    LedgerEntry.objects.create(
        rental=rental,
        consumer=user,
        provider=provider,
        gpu_type=gpu,
        period_start=start,
        period_end=end,
        seconds=hours * 3600,
        price_per_hour=amount / hours,
        provider_cost=Decimal(provider_cost if provider_cost is not None else amount),
        amount=amount,
    )
    return rental


def day(n: int) -> datetime:
    return NOW.replace(day=n)


def bars(html: str, chart: str) -> list[str]:
    """The data-label of every bar in one chart (by its data-chart name)."""
    match = re.search(rf'<svg[^>]*data-chart="{chart}".*?</svg>', html, re.S)
    assert match, f"no {chart} chart"
    return re.findall(r'<rect class="bar"[^>]*data-label="([^"]*)"', match.group(0))


def read_csv(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.content.decode())))


@pytest.fixture
def team(user, other_user, staff):
    """alice: two sessions this month (two GPU types), bob: one, carol (staff): none."""
    return {
        "a1": spend(user, "12.345000", day=day(3), gpu="RTX 4090 24GB"),
        "a2": spend(user, "7.50", day=day(10), gpu="A100 SXM4 80GB", provider="tensordock"),
        "b1": spend(other_user, "40.00", day=day(10), gpu="H100 SXM5 80GB"),
        "old": spend(user, "99.00", day=datetime(2025, 2, 20, tzinfo=UTC)),
    }


# --------------------------------------------------------------------------------------------
# Access and ownership
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [URL, CSV_URL])
def test_anonymous_is_sent_to_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_user_sees_only_their_own_spend(client, user, team):
    client.force_login(user)
    response = client.get(URL)
    html = response.content.decode()
    assert response.status_code == 200
    assert response.context["total"] == Decimal("19.85")  # 12.345 → 12.35 (half up) + 7.50
    assert str(team["a1"].pk) in html and str(team["a2"].pk) in html
    assert str(team["b1"].pk) not in html  # bob's session
    assert str(team["old"].pk) not in html  # February
    assert "bob" not in html
    assert 'name="consumer"' not in html  # no person selector
    assert 'data-chart="people"' not in html


def test_staff_see_the_team_and_can_filter_by_person(client, staff, team):
    client.force_login(staff)
    html = client.get(URL).content.decode()
    for key in ("a1", "a2", "b1"):
        assert str(team[key].pk) in html
    assert '<option value="bob"' in html
    assert sorted(bars(html, "people")) == ["alice", "bob"]

    response = client.get(URL, {"consumer": "bob"})
    html = response.content.decode()
    assert response.context["total"] == Decimal("40.00")
    assert str(team["b1"].pk) in html
    assert str(team["a1"].pk) not in html
    assert 'data-chart="people"' not in html  # one person: no per-person chart


def test_staff_unknown_person_is_a_message_not_an_error(client, staff, team):
    client.force_login(staff)
    response = client.get(URL, {"consumer": "nobody"})
    assert response.status_code == 200
    assert "There is no user named “nobody”" in response.content.decode()


def test_user_asking_for_someone_else_is_refused(client, user, team):
    client.force_login(user)
    assert client.get(CSV_URL, {"consumer": "bob"}).status_code == 403
    page = client.get(URL, {"consumer": "bob"})
    assert page.status_code == 403
    assert "You can only see your own spend." in page.content.decode()
    # Naming yourself is fine.
    assert client.get(CSV_URL, {"consumer": "alice"}).status_code == 200


# --------------------------------------------------------------------------------------------
# CSV export
# --------------------------------------------------------------------------------------------
def test_csv_has_one_row_per_rental_with_exact_amounts(client, user, team):
    client.force_login(user)
    response = client.get(CSV_URL)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == 'attachment; filename="costs-alice-20250301-20250331.csv"'
    header, *rows = read_csv(response)
    assert header == ["rental_id", "user", "gpu", "provider", "hours", "amount"]  # no provider cost
    assert sorted(rows) == sorted([
        [str(team["a1"].pk), "alice", "1x RTX 4090 24GB", "vastai", "2.00", "12.35"],
        [str(team["a2"].pk), "alice", "1x A100 SXM4 80GB", "tensordock", "2.00", "7.50"],
    ])  # fmt: skip


def test_staff_csv_has_everyone_and_provider_cost(client, staff, user, other_user):
    marked = spend(user, "11.00", day=day(4), provider_cost="10.00")
    theirs = spend(other_user, "5.50", day=day(5), provider_cost="5.00")
    client.force_login(staff)
    header, *rows = read_csv(client.get(CSV_URL))
    assert header[-1] == "provider_cost"
    assert {r[0]: (r[1], r[5], r[6]) for r in rows} == {
        str(marked.pk): ("alice", "11.00", "10.00"),
        str(theirs.pk): ("bob", "5.50", "5.00"),
    }
    header, *rows = read_csv(client.get(CSV_URL, {"consumer": "bob"}))
    assert [r[0] for r in rows] == [str(theirs.pk)]


def test_csv_follows_the_period_filter(client, user, team):
    client.force_login(user)
    _, *rows = read_csv(client.get(CSV_URL, {"period": "last_month"}))
    assert [(r[0], r[5]) for r in rows] == [(str(team["old"].pk), "99.00")]
    _, *rows = read_csv(client.get(CSV_URL, {"from": "2025-03-01", "to": "2025-03-05"}))
    assert [r[0] for r in rows] == [str(team["a1"].pk)]


def test_csv_with_bad_dates_is_a_400_with_the_reason(client, user):
    client.force_login(user)
    response = client.get(CSV_URL, {"from": "2025-03-10", "to": "2025-03-01"})
    assert response.status_code == 400
    assert "before the start date" in response.content.decode()


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"period": "custom", "from": "2025-13-01"}, "Enter a date as YYYY-MM-DD."),
        ({"from": "yesterday"}, "Enter a date as YYYY-MM-DD."),
        (
            {"from": "2025-03-10", "to": "2025-03-01"},
            "The end date 2025-03-01 is before the start date 2025-03-10.",
        ),
        ({"period": "custom"}, "Pick a start date for a custom period."),
        ({"period": "fortnight"}, "Select a valid choice."),
    ],
)
def test_bad_filters_show_a_message(client, user, team, params, message):
    client.force_login(user)
    response = client.get(URL, params)
    assert response.status_code == 200
    html = response.content.decode()
    assert message in html
    assert "Can't show spend for these filters." in html
    assert "data-rental" not in html and 'data-chart="time"' not in html


def test_last_7_days_has_one_bar_per_day(client, user, team):
    client.force_login(user)
    html = client.get(URL, {"period": "7d"}).content.decode()
    labels = bars(html, "time")
    assert labels == [f"{d:%a} 2025-03-{d.day:02d}" for d in (day(n) for n in range(9, 16))]
    assert re.search(r"<title>Mon 2025-03-10: \$7\.50 \(2 h 00 min\)</title>", html)  # billed time as h:m


def test_this_month_day_chart_runs_to_today_and_gpu_chart_has_one_bar_per_type(client, user, team):
    client.force_login(user)
    html = client.get(URL).content.decode()
    assert len(bars(html, "time")) == 15  # March 1 to 15 (today)
    assert bars(html, "gpu") == ["RTX 4090 24GB", "A100 SXM4 80GB"]  # biggest first
    assert '<title id="chart-gpu-t">Spend per GPU type</title>' in html
    assert ">Spend (USD)</text>" in html  # axis title


def test_a_long_custom_period_is_charted_per_month(client, user, team):
    client.force_login(user)
    response = client.get(URL, {"period": "custom", "from": "2024-12-01", "to": "2025-03-31"})
    assert response.context["monthly"] is True
    assert bars(response.content.decode(), "time") == [
        "December 2024",
        "January 2025",
        "February 2025",
        "March 2025",
    ]
    assert response.context["total"] == Decimal("118.85")


def test_htmx_request_gets_only_the_results_fragment(client, user, team):
    client.force_login(user)
    response = client.get(URL, {"period": "last_month"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="spend-summary"')
    assert "<html" not in html
    assert str(team["old"].pk) in html


def test_empty_period_says_what_to_do(client, user):
    client.force_login(user)
    html = client.get(URL).content.decode()
    assert "No spend in March 2025." in html
    assert "rent a GPU" in html
    assert "No budget set" in html
    assert "<svg" not in html


# --------------------------------------------------------------------------------------------
# Budgets and the banner
# --------------------------------------------------------------------------------------------
def test_provider_cost_only_for_staff_and_only_with_a_markup(client, user, staff):
    spend(user, "11.00", day=day(4), provider_cost="10.00")
    client.force_login(user)
    assert "Provider cost" not in client.get(URL).content.decode()
    client.force_login(staff)
    response = client.get(URL)
    assert "Provider cost" in response.content.decode()
    assert response.context["margin"] == Decimal("1.00")


def test_budget_meters_show_spent_and_percent(client, user, other_user):
    spend(user, "12.50", day=day(3))
    spend(user, "7.50", day=day(10))
    spend(other_user, "40.00", day=day(10))
    Budget.objects.create(user=user, monthly_limit=Decimal("50.00"))
    Budget.objects.create(user=None, monthly_limit=Decimal("1000.00"))
    client.force_login(user)
    response = client.get(URL)
    personal, team_meter = response.context["personal_budget"], response.context["team_budget"]
    assert (personal["spent"], personal["remaining"], personal["percent"]) == (
        Decimal("20.00"), Decimal("30.00"), Decimal("40.0"),
    )  # fmt: skip
    assert team_meter["spent"] == Decimal("60.00")
    html = response.content.decode()
    assert 'aria-valuenow="40.0"' in html and "Your budget" in html and "Team budget" in html


def test_banner_appears_at_80_percent_and_not_below(client, user):
    Budget.objects.create(user=user, monthly_limit=Decimal("100.00"))
    spend(user, "79.00", day=day(2))
    client.force_login(user)
    html = client.get("/sessions/").content.decode()
    assert "budget-banner" not in html

    spend(user, "1.00", day=day(3))  # 80.00 of 100.00
    html = client.get("/sessions/").content.decode()
    assert "budget-banner" not in html  # the banner is cached for 30 s per user
    cache.clear()
    html = client.get("/sessions/").content.decode()
    assert 'class="budget-banner"' in html
    assert "Your monthly budget is at 80.0%" in html
    assert 'href="/costs/">See costs' in html


def test_banner_is_lazy_and_escaped(client, user, monkeypatch):
    calls = []

    def banner(u):
        calls.append(u)
        return "<b>Team</b> at 95%"

    monkeypatch.setattr(services, "budget_banner", banner)
    client.force_login(user)
    html = client.get(URL).content.decode()
    assert "&lt;b&gt;Team&lt;/b&gt; at 95%" in html
    assert len(calls) == 1  # once per page, however often the template reads it
    client.get(URL, headers={"HX-Request": "true"})  # a fragment never shows the banner
    assert len(calls) == 1
    client.get("/sessions/")  # cached for the next pages
    assert len(calls) == 1
    cache.clear()
    client.get("/sessions/")
    assert len(calls) == 2
    client.logout()
    client.get("/login/")
    assert len(calls) == 2


def test_the_banner_costs_no_queries_once_cached(client, user, django_assert_num_queries):
    Budget.objects.create(user=user, monthly_limit=Decimal("100.00"))
    Budget.objects.create(user=None, monthly_limit=Decimal("1000.00"))
    spend(user, "90.00", day=day(2))
    client.force_login(user)
    assert "Your monthly budget is at 90.0%" in client.get("/sessions/").content.decode()
    with django_assert_num_queries(4):  # session, user, count + page of sessions; none for the banner
        assert "Your monthly budget is at 90.0%" in client.get("/sessions/").content.decode()


def test_the_months_total_is_rounded_once_and_matches_the_budget(client, user):
    spend(user, "1.005000", day=day(2))
    spend(user, "1.005000", day=day(3))  # each row shows $1.01, together they cost $2.01
    Budget.objects.create(user=user, monthly_limit=Decimal("10.00"))
    client.force_login(user)
    response = client.get(URL)
    assert [row["amount"] for row in response.context["rows"]] == [Decimal("1.01"), Decimal("1.01")]
    assert response.context["total"] == Decimal("2.01")
    assert response.context["personal_budget"]["spent"] == Decimal("2.01")
