"""Issue 19, the pages of "the first hour, without surprises": an expired login under HTMX, the
"Done" confirmation for an unsaved key, ended sessions, times in the user's zone, billed time as
hours and minutes, what comes next while a machine is on its way, and the rent page's budget
warning and hours rule."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.template import Context, Template

from costs.models import Budget
from sessions.hours import MIN_HOURS, STEP_HOURS
from sessions.models import EventKind, RentalEvent, Status
from shopper.templatetags import shopper_format
from tests.factories import RentalFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def offer(make_offer):
    return make_offer(provider="vastai", provider_offer_id="o-9", gpu_count=1, price_per_hour="2.0000")


def detail(client, rental, **extra):
    return client.get(f"/sessions/{rental.pk}/", **extra).content.decode()


# --------------------------------------------------------------------------------------------
# An expired login under HTMX: a full-page redirect, never a login page inside a form
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,path",
    [
        ("post", "/offers/{offer}/rent/"),  # the rent form's submit
        ("get", "/offers/{offer}/rent/estimate/?reservation_hours=2"),  # the estimate as you type
        ("get", "/sessions/{rental}/"),  # the status poll
        ("post", "/sessions/{rental}/done/"),  # "Done — shut it down"
        ("get", "/sessions/?status=live"),  # the list's filter
    ],
)
def test_htmx_request_without_login_redirects_the_whole_page(client, user, offer, method, path):
    rental = RentalFactory(consumer=user, reachable=True)
    url = path.format(offer=offer.pk, rental=rental.pk)
    page = f"http://testserver/offers/{offer.pk}/rent/?from=menu"
    response = getattr(client, method)(url, HTTP_HX_CURRENT_URL=page, **HTMX)
    # Not a 302 the XHR would follow (and htmx swap the login page into the form): HX-Redirect,
    # back to the page the user was on, not to the fragment endpoint.
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/login/?next=/offers/{offer.pk}/rent/%3Ffrom%3Dmenu"
    assert b"Log in" not in response.content
    assert RentalEvent.objects.filter(rental=rental).count() == 0  # nothing happened
    assert rental.__class__.objects.get(pk=rental.pk).status == Status.ACTIVE


def test_htmx_redirect_ignores_a_current_url_of_another_site(client, user):
    rental = RentalFactory(consumer=user, reachable=True)
    response = client.get(f"/sessions/{rental.pk}/", HTTP_HX_CURRENT_URL="https://evil.example/phish", **HTMX)
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/login/?next=/sessions/{rental.pk}/"


def test_plain_requests_still_get_the_302_and_logged_in_htmx_is_untouched(client, user):
    rental = RentalFactory(consumer=user, reachable=True)
    response = client.get(f"/sessions/{rental.pk}/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    client.force_login(user)
    response = client.get(f"/sessions/{rental.pk}/", **HTMX)
    assert response.status_code == 200 and "HX-Redirect" not in response


# --------------------------------------------------------------------------------------------
# "Done" asks first while the generated key was never downloaded
# --------------------------------------------------------------------------------------------
def _done_form(html: str) -> str:
    return re.search(r"<form[^>]*sessions/[^/]+/done/[^>]*>", html, re.S).group(0)


def test_done_asks_when_the_page_made_key_was_not_downloaded(client, user):
    rental = RentalFactory(consumer=user, reachable=True, with_key=True, request_key="form:0f0e")
    client.force_login(user)
    form = _done_form(detail(client, rental))
    assert "hx-confirm=" in form and "deleted when the machine is shut down" in form
    assert "data-key-unsaved" in form

    client.get(f"/sessions/{rental.pk}/ssh-key/")  # downloads it (an event on the timeline)
    assert "hx-confirm" not in _done_form(detail(client, rental))


def test_done_does_not_ask_without_a_generated_key_or_when_the_api_handed_it_over(client, user, staff):
    client.force_login(user)
    own_key = RentalFactory(consumer=user, reachable=True)
    api_made = RentalFactory(consumer=user, reachable=True, with_key=True, request_key="")
    for rental in (own_key, api_made):
        assert "hx-confirm" not in _done_form(detail(client, rental))
    # Staff looking at someone's session are not asked about a key they cannot download.
    page_made = RentalFactory(consumer=user, reachable=True, with_key=True, request_key="form:1")
    client.force_login(staff)
    assert "hx-confirm" not in _done_form(detail(client, page_made))


# --------------------------------------------------------------------------------------------
# A finished session: how long it ran, the total, when it ended — nothing live
# --------------------------------------------------------------------------------------------
def test_ended_session_shows_duration_total_and_end_and_nothing_live(client, user, clock):
    rental = RentalFactory(
        consumer=user, status=Status.DESTROYED, price_per_hour=Decimal("2.0000"),
        active_since=NOW - timedelta(hours=2), ended_at=NOW - timedelta(minutes=29, seconds=30),
        last_heartbeat_at=NOW - timedelta(minutes=31), now=NOW - timedelta(hours=3),
    )  # fmt: skip
    client.force_login(user)
    html = detail(client, rental)
    assert re.search(r"<dt>Ran</dt><dd data-ran><strong>1 h 30 min</strong>", html)
    assert re.search(r"<dt>Total cost</dt><dd data-total><strong>\$3\.02</strong>", html)  # 1 h 30 min 30 s
    assert 'data-ended><time datetime="2025-03-01T11:30:30+00:00"' in html
    for live_only in ("Cost so far", "Reservation ends", "Hard maximum", "Last heartbeat", "(in "):
        assert live_only not in html


def test_failed_session_says_nothing_was_billed(client, user):
    rental = RentalFactory(consumer=user, status=Status.FAILED, ended_at=NOW)
    client.force_login(user)
    html = detail(client, rental)
    assert "never became ready: nothing was billed" in html and "$0.00" in html


def test_live_session_keeps_cost_so_far(client, user):
    rental = RentalFactory(consumer=user, reachable=True)
    client.force_login(user)
    html = detail(client, rental)
    assert "Cost so far" in html and "Reservation ends" in html and "<dt>Ran</dt>" not in html


# --------------------------------------------------------------------------------------------
# Times in the user's zone, UTC on hover, the same on every page
# --------------------------------------------------------------------------------------------
def render_when(moment, fmt="Y-m-d H:i") -> str:
    return Template("{% load shopper_format %}{{ m|when:f }}").render(Context({"m": moment, "f": fmt}))


def test_when_writes_the_users_zone_with_utc_on_hover():
    from zoneinfo import ZoneInfo

    from shopper import middleware

    moment = datetime(2025, 7, 1, 22, 5, tzinfo=UTC)
    token = middleware._display_zone.set(lambda: ZoneInfo("Europe/Berlin"))
    try:
        html = render_when(moment)
    finally:
        middleware._display_zone.reset(token)
    assert html == (
        '<time datetime="2025-07-01T22:05:00+00:00" title="2025-07-01 22:05 UTC" data-when="Y-m-d H:i"'
        ' data-zone="Europe/Berlin">2025-07-02 00:05 UTC+2</time>'
    )
    # Without a zone (no cookie, or the live relay): UTC, said so, and left for app.js to localise.
    assert render_when(moment) == (
        '<time datetime="2025-07-01T22:05:00+00:00" title="2025-07-01 22:05 UTC" data-when="Y-m-d H:i">'
        "2025-07-01 22:05 UTC</time>"
    )


@pytest.mark.parametrize(
    "cookie,shown,zone",
    [
        ("America/New_York", "2025-03-01 07:00", "UTC-5"),
        ("Asia/Kolkata", "2025-03-01 17:30", "UTC+5:30"),
        ("Not/AZone", "2025-03-01 12:00", "UTC"),  # anything else a cookie may hold: UTC
        ("../../etc/passwd", "2025-03-01 12:00", "UTC"),
    ],
)
def test_pages_show_times_in_the_zone_of_the_tz_cookie(client, user, cookie, shown, zone):
    rental = RentalFactory(consumer=user, reachable=True, created_at=NOW, now=NOW)
    RentalEvent.objects.create(rental=rental, kind=EventKind.INFO, reason="hello", at=NOW)
    client.force_login(user)
    client.cookies["tz"] = cookie
    html = detail(client, rental)
    assert 'title="2025-03-01 12:00 UTC" data-when="Y-m-d H:i"' in html  # UTC on hover
    assert f">{shown} {zone}</time>" in html  # "Rented"
    assert f">{shown}:00 {zone}</time>" in html  # the timeline, to the second
    assert f">{shown} {zone}</time>" in client.get("/sessions/").content.decode()  # the list


def test_the_zone_changes_how_times_are_written_not_the_costs_periods(client, user, clock):
    """The costs page's "this month" stays the UTC month (the budget's), whatever the zone."""
    client.force_login(user)
    client.cookies["tz"] = "Pacific/Kiritimati"  # UTC+14: already 2 March there
    response = client.get("/costs/", {"period": "7d"})
    assert response.status_code == 200
    assert response.context["period"].last_day.isoformat() == "2025-03-01"


def test_extension_message_uses_the_users_zone(client, user):
    rental = RentalFactory(consumer=user, reachable=True)
    client.force_login(user)
    client.cookies["tz"] = "Asia/Tokyo"
    response = client.post(f"/sessions/{rental.pk}/extend/", {"hours": "1"}, follow=True)
    rental.refresh_from_db()
    ends = rental.reservation_ends_at.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    assert f"now ends {ends:%Y-%m-%d %H:%M} UTC+9." in response.content.decode()


# --------------------------------------------------------------------------------------------
# Billed time as hours and minutes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "seconds,text",
    [(0, "0 min"), (59, "< 1 min"), (60, "1 min"), (3599, "59 min"), (3600, "1 h 00 min"),
     (5430, "1 h 30 min"), (90000, "25 h 00 min"), (timedelta(minutes=125), "2 h 05 min"), (None, "")],
)  # fmt: skip
def test_hm(seconds, text):
    assert shopper_format.hm(seconds) == text


def test_elapsed():
    elapsed = shopper_format.elapsed
    assert elapsed(NOW - timedelta(seconds=42), NOW) == "42 s"
    assert elapsed(NOW - timedelta(seconds=125), NOW) == "2 min 05 s"
    assert elapsed(NOW - timedelta(minutes=62), NOW) == "1 h 02 min"


def test_costs_page_shows_billed_time_as_hours_and_minutes(client, user, clock):
    from costs.models import LedgerEntry

    rental = RentalFactory(
        consumer=user, status=Status.DESTROYED, price_per_hour=Decimal("2.0000"),
        active_since=NOW - timedelta(hours=3), ended_at=NOW - timedelta(hours=3) + timedelta(seconds=5430),
        now=NOW - timedelta(hours=4),
    )  # fmt: skip
    start = rental.active_since
    LedgerEntry.objects.create(
        rental=rental, consumer=user, period_start=start, period_end=start + timedelta(hours=1),
        seconds=3600, price_per_hour=Decimal("2.0000"), amount=Decimal("2.000000"),
        provider_cost=Decimal("2.000000"), gpu_type=rental.gpu_type, provider=rental.provider,
    )  # fmt: skip
    client.force_login(user)
    html = client.get("/costs/", {"period": "this_month"}).content.decode()
    assert re.search(r'data-billed="5430">1 h 30 min</strong>', html)
    assert re.search(r'<td class="num nowrap" title="1.51 h">1 h 30 min</td>', html)
    assert "Billed hours" not in html


# --------------------------------------------------------------------------------------------
# While a machine is on its way: the time waited and what usually comes next
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "provider,status,hint",
    [
        ("vastai", Status.BOOTING, "Vast machines usually take 1–5 min to pull the image"),
        ("vastai", Status.VERIFYING, "often refused while it starts"),
        ("tensordock", Status.VERIFYING, "TensorDock installs your SSH key 60–90 s after the machine boots"),
        ("tensordock", Status.PENDING, "TensorDock is asked for the machine"),
        ("runpod", Status.VERIFYING, "SSH on a RunPod pod usually answers 30–90 s after it starts running"),
        ("lambda", Status.BOOTING, "Lambda instances usually take 3–5 min to boot"),
        ("elsewhere", Status.BOOTING, "New machines usually take a few minutes"),
    ],
)
def test_pending_page_shows_elapsed_time_and_what_comes_next(client, user, clock, provider, status, hint):
    rental = RentalFactory(
        consumer=user, provider=provider, status=status, now=NOW, created_at=NOW - timedelta(seconds=125)
    )
    client.force_login(user)
    html = detail(client, rental)
    assert re.search(
        r'Waiting <strong data-elapsed-since="2025-03-01T11:57:55\+00:00">2 min 05 s</strong>', html
    )
    assert hint in html


def test_no_pending_hint_once_active(client, user):
    rental = RentalFactory(consumer=user, reachable=True)
    client.force_login(user)
    assert "data-elapsed-since" not in detail(client, rental)


# --------------------------------------------------------------------------------------------
# The rent page: the budget warning before submit, and the one hours rule
# --------------------------------------------------------------------------------------------
def test_rent_page_warns_when_the_estimate_exceeds_what_is_left(client, user, offer):
    Budget.objects.create(user=user, monthly_limit=Decimal("5"))
    client.force_login(user)
    # $2/h: 2 h = $4.00 fits the $5 budget; 3 h = $6.00 does not (2.5 h would).
    fits = client.get(f"/offers/{offer.pk}/rent/estimate/", {"reservation_hours": "2"}, **HTMX)
    assert "data-budget-warning" not in fits.content.decode()
    over = client.get(
        f"/offers/{offer.pk}/rent/estimate/", {"reservation_hours": "3"}, **HTMX
    ).content.decode()
    assert "The estimate $6.00 is more than the $5.00 left of your budget this month" in over
    assert "at most 2.5 h fit" in over
    page = client.get(f"/offers/{offer.pk}/rent/").content.decode()  # the default 2 h fits
    assert "data-budget-warning" not in page


def test_rent_page_warns_for_the_team_budget_too(client, user, offer):
    Budget.objects.create(user=None, monthly_limit=Decimal("0.40"))
    client.force_login(user)
    html = client.get(f"/offers/{offer.pk}/rent/").content.decode()
    assert "left of the team budget this month" in html and "not even 15 minutes fit" in html


def test_rent_page_hours_input_follows_the_hours_rule(client, user, offer, settings):
    settings.SHOPPER_HARD_MAX_HOURS = 12
    client.force_login(user)
    html = client.get(f"/offers/{offer.pk}/rent/").content.decode()
    field = re.search(r'<input type="number" id="id_reservation_hours"[^>]*>', html, re.S).group(0)
    assert f'min="{MIN_HOURS}"' in field and f'step="{STEP_HOURS}"' in field and 'max="12"' in field
    # The estimate applies the same rule as the API: a length the API refuses gets no estimate.
    for refused in ("0.1", "1.1", "12.25"):
        html = client.get(f"/offers/{offer.pk}/rent/estimate/", {"reservation_hours": refused}, **HTMX)
        assert "<strong>—</strong>" in html.content.decode(), refused
    ok = client.get(f"/offers/{offer.pk}/rent/estimate/", {"reservation_hours": "1.25"}, **HTMX)
    assert "<strong>$2.50</strong>" in ok.content.decode()


@pytest.mark.parametrize(
    "zone,label",
    [
        ("UTC", "UTC"),
        ("Asia/Tokyo", "UTC+9"),
        ("America/St_Johns", "UTC-3:30"),
        ("Asia/Kathmandu", "UTC+5:45"),
    ],
)
def test_offset_label(zone, label):
    from zoneinfo import ZoneInfo

    from shopper.templatetags.shopper_format import offset_label

    assert offset_label(datetime(2025, 1, 15, 12, 0, tzinfo=ZoneInfo(zone))) == label


def test_live_pushed_fragments_match_the_page(client, user):
    """The live relay renders without a request: times come out in UTC for app.js to rewrite in
    the page's zone (no data-zone), and the Done question is there exactly as on the page."""
    from sessions import live

    rental = RentalFactory(consumer=user, reachable=True, with_key=True, request_key="form:1")
    RentalEvent.objects.create(rental=rental, kind=EventKind.INFO, reason="hello", at=NOW)
    html = live.render_rental(rental, owner_view=True)
    assert (
        '<time datetime="2025-03-01T12:00:00+00:00" title="2025-03-01 12:00:00 UTC" data-when="Y-m-d H:i:s">'
        in html
    )
    assert "data-zone" not in html
    assert "hx-confirm=" in _done_form(html)
    client.force_login(user)
    assert "hx-confirm=" in _done_form(detail(client, rental))


# --------------------------------------------------------------------------------------------
# The profile setting: a zone for every browser, over the browser's own
# --------------------------------------------------------------------------------------------
def test_profile_time_zone_wins_over_the_browser_and_holds_across_logins(client, user):
    from shopper.models import Profile

    rental = RentalFactory(consumer=user, reachable=True, created_at=NOW, now=NOW)
    client.force_login(user)
    client.cookies["tz"] = "America/New_York"
    assert ">2025-03-01 07:00 UTC-5</time>" in detail(client, rental)

    response = client.post("/settings/", {"time_zone": "Asia/Tokyo"}, follow=True)
    assert "Times are now shown in Asia/Tokyo." in response.content.decode()
    assert Profile.objects.get(user=user).time_zone == "Asia/Tokyo"
    html = detail(client, rental)
    assert ">2025-03-01 21:00 UTC+9</time>" in html and 'data-time-zone="Asia/Tokyo"' in html

    client.logout()  # another browser, another login: the profile still holds
    client.force_login(user)
    client.cookies["tz"] = "Europe/Paris"
    assert ">2025-03-01 21:00 UTC+9</time>" in detail(client, rental)

    client.post("/settings/", {"time_zone": ""})  # back to the browser's
    assert ">2025-03-01 13:00 UTC+1</time>" in detail(client, rental)


def test_settings_refuse_an_unknown_zone_and_change_nothing(client, user):
    from shopper.models import Profile

    client.force_login(user)
    for bad in ("Mars/Olympus", "../../etc/passwd", "x" * 500):
        response = client.post("/settings/", {"time_zone": bad})
        assert response.status_code == 400
        assert "Pick a time zone from the list" in response.content.decode()
    assert not Profile.objects.exists()


def test_api_answers_never_touch_the_session_for_the_zone(api_client):
    """The zone is worked out only when a page writes a time: an API answer has no Vary: Cookie
    from it (cached answers stay shareable)."""
    response = api_client.get("/api/v1/health")
    assert "Cookie" not in response.get("Vary", "")


def test_dashboard_top_spenders_show_billed_time_as_hours_and_minutes(client, staff, user, clock):
    RentalFactory(
        consumer=user, status=Status.DESTROYED, price_per_hour=Decimal("2.0000"),
        active_since=NOW - timedelta(hours=3), ended_at=NOW - timedelta(hours=3) + timedelta(seconds=5430),
        now=NOW - timedelta(hours=4),
    )  # fmt: skip
    client.force_login(staff)
    html = client.get("/").content.decode()
    assert re.search(r"<td>alice</td><td class=\"num nowrap\">1 h 30 min</td>", html)
