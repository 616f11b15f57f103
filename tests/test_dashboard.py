"""The home dashboard: my live and recent sessions, my spend against my budget, and the team for staff."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from costs.models import Budget
from costs.services import month_start
from sessions.models import Rental, Status
from tests.factories import RentalFactory, UserFactory

pytestmark = pytest.mark.django_db


def make_rental(user, status=Status.ACTIVE, *, gpu="RTX 4090 24GB", hours_active=1.0, **kw) -> Rental:
    """A rental that has been active ``hours_active`` hours at $2/h (no markup), still live unless
    ``status`` says otherwise. Kept inside the current month so its spend counts this month."""
    now = timezone.now()
    active = max(now - timedelta(hours=hours_active), month_start(now))
    billed = status in (Status.ACTIVE, Status.STOPPING, Status.DESTROYED)
    ended = status in (Status.DESTROYED, Status.FAILED)
    fields = dict(
        consumer=user,
        status=status,
        gpu_type=gpu,
        price_per_hour=Decimal("2.0000"),
        now=now,
        reservation_hours=1.5,
        hard_max_hours=10,
        created_at=active - timedelta(minutes=2),
        active_since=active if billed else None,
        ended_at=now - timedelta(minutes=1) if ended else None,
    )
    return RentalFactory(**{**fields, **kw})


def test_anonymous_is_sent_to_login(client):
    response = client.get(reverse("home"))
    assert response.status_code == 302 and reverse("login") in response["Location"]


def test_shows_my_live_rentals_and_not_other_users(client_logged_in, user, other_user):
    mine = make_rental(user, gpu="H100 SXM5 80GB")
    booting = make_rental(user, Status.BOOTING, gpu="L40S 48GB")
    ended = make_rental(user, Status.DESTROYED, gpu="A10 24GB")
    theirs = make_rental(other_user, gpu="A100 SXM4 80GB")

    response = client_logged_in.get(reverse("home"))
    assert response.status_code == 200
    html = response.content.decode()
    live = html.split('id="live-sessions"')[1].split("</section>")[0]
    assert "H100 SXM5 80GB" in live and "L40S 48GB" in live
    assert "A10 24GB" not in live
    assert "ends in 1\xa0hour" in live  # reservation countdown
    assert f"${mine.cost_so_far()}" in live  # cost so far (about $2.00 for one hour at $2/h)
    assert "Booting" in live
    assert "A10 24GB" in html.split("<h2>Recent</h2>")[1]  # the ended one is under Recent
    assert "A100 SXM4 80GB" not in html and str(theirs.pk) not in html
    assert "All live sessions" not in html and "Team spend" not in html  # no team section
    assert str(booting.pk) in html and str(ended.pk) in html


def test_live_sessions_fragment_for_htmx_polls(client_logged_in, user):
    make_rental(user, gpu="H100 SXM5 80GB")
    response = client_logged_in.get(reverse("home"), HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card" id="live-sessions"')
    assert "H100 SXM5 80GB" in html and "<html" not in html and "My spend" not in html


def test_no_budget_set(client_logged_in, user):
    make_rental(user, hours_active=0.5)
    html = client_logged_in.get(reverse("home")).content.decode()
    assert "No budget set" in html
    assert 'data-my-spend="1.00"' in html  # half an hour at $2/h


def test_budget_meter_shows_spent_against_limit(client_logged_in, user):
    Budget.objects.create(user=user, monthly_limit=Decimal("50.00"))
    make_rental(user, Status.DESTROYED, hours_active=2)  # $4 spent (ended a minute ago)

    response = client_logged_in.get(reverse("home"))
    html = response.content.decode()
    assert "No budget set" not in html.split("My budget")[1].split("</section>")[0]
    assert 'data-budget="My budget"' in html
    assert "Spent <strong>$4.00</strong>" in html or "Spent <strong>$3.9" in html
    assert "of $50.00" in html
    meter = response.context["my_budget"]
    assert meter["limit"] == Decimal("50.00")
    assert Decimal("3.95") <= meter["spent"] <= Decimal("4.00")
    assert meter["level"] == "ok"


def test_staff_see_the_team(client, staff, user, other_user):
    Budget.objects.create(user=None, monthly_limit=Decimal("100.00"))
    make_rental(user, gpu="H100 SXM5 80GB", hours_active=2)
    make_rental(other_user, gpu="A100 SXM4 80GB", hours_active=1)
    make_rental(other_user, Status.DESTROYED, gpu="A10 24GB")
    client.force_login(staff)

    response = client.get(reverse("home"))
    html = response.content.decode()
    # My own section stays mine: staff have no rentals of their own here.
    live = html.split('id="live-sessions"')[1].split("</section>")[0]
    assert "No live sessions" in live
    team = html.split('id="team-live"')[1].split("</section>")[0]
    assert "H100 SXM5 80GB" in team and "A100 SXM4 80GB" in team and "A10 24GB" not in team
    assert ">alice<" in team and ">bob<" in team  # consumer column
    assert 'data-budget="Team budget"' in html and "of $100.00" in html
    assert response.context["team_budget"]["limit"] == Decimal("100.00")
    # 2 h + 1 h + the ended rental's 1 h at $2/h, computed live.
    assert Decimal("7.90") <= response.context["team_spend"] <= Decimal("8.00")
    assert [p["key"] for p in response.context["team_people"]] == ["alice", "bob"] or [
        p["key"] for p in response.context["team_people"]
    ] == ["bob", "alice"]


def test_non_staff_never_get_the_team_section(client_logged_in, other_user):
    Budget.objects.create(user=None, monthly_limit=Decimal("100.00"))
    make_rental(other_user)
    response = client_logged_in.get(reverse("home"))
    assert "team_live" not in response.context
    assert 'id="team-live"' not in response.content.decode()


@pytest.mark.parametrize("is_staff", [False, True])
def test_query_count_does_not_grow_with_rentals(client, django_assert_max_num_queries, is_staff):
    me = UserFactory(username="dana", is_staff=is_staff)
    others = UserFactory.create_batch(4)
    Budget.objects.create(user=me, monthly_limit=Decimal("500.00"))
    Budget.objects.create(user=None, monthly_limit=Decimal("5000.00"))
    client.force_login(me)

    def render_counting() -> int:
        cache.clear()  # the budget banner of base.html is cached for 30 s: count it every time
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(reverse("home")).status_code == 200
        return len(ctx.captured_queries)

    few = render_counting()
    for i in range(6):
        make_rental(me, gpu=f"GPU {i}")
        make_rental(me, Status.DESTROYED)
        for other in others:
            make_rental(other)
    many = render_counting()
    assert many == few, (few, many)
    # Session, user, rentals (live, recent; team live), budgets and spend: a small fixed number.
    cache.clear()
    # Session and user 2, my live and recent rentals 2, budget status 4, spend records 2, the
    # base.html budget banner 4; staff: team live 1 (their own spend comes from the team's records).
    with django_assert_max_num_queries(15 if is_staff else 14):
        client.get(reverse("home"))
