"""Idle stop (sessions/idle.py): idle heartbeats, the warning, the stop "idle for N min"; a
heartbeat without utilisation never counts; the setting at rent time, on the page and the API."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from sessions.idle import idle_enforce
from sessions.models import EventKind, Rental, RentalEvent, Status, token_hash
from tests.sessions.conftest import events, fresh

S = Status
URL = "/api/v1/agent/heartbeat"
IDLE = {"gpus": [{"util": 0, "mem_used_mb": 10, "mem_total_mb": 24564}, {"util": 2}]}
BUSY = {"gpus": [{"util": 0}, {"util": 80}]}
NO_UTIL = {"gpus": [{"mem_used_mb": 10, "mem_total_mb": 24564}]}


@pytest.fixture(autouse=True)
def idle_settings(settings):
    settings.SHOPPER_IDLE_UTIL_PERCENT = 5
    settings.SHOPPER_IDLE_WARNING_MINUTES = 10
    settings.SHOPPER_IDLE_STOP_MINUTES = None
    settings.SHOPPER_HEARTBEAT_TIMEOUT_SECONDS = 300
    settings.SHOPPER_AGENT_HEARTBEATS_PER_MINUTE = 1000


@pytest.fixture
def idle_rental(active_rental):
    def make(minutes=45, **kw) -> Rental:
        rental = active_rental(idle_stop_minutes=minutes, **kw)
        Rental.objects.filter(pk=rental.pk).update(agent_token_hash=token_hash("tok"))
        return fresh(rental)

    return make


def beat(client, body):
    auth = {"HTTP_AUTHORIZATION": "Bearer tok"}
    r = client.post(URL, data=json.dumps(body), content_type="application/json", **auth)
    assert r.status_code == 200, r.content
    return r.json()["action"]


def run_for(fake, client, body, minutes: int, *, enforce=True) -> None:
    """Heartbeats every 30 s for ``minutes`` with the safety loop's idle pass after each."""
    for _ in range(minutes * 2):
        beat(client, body)
        if enforce:
            idle_enforce()
        fake.traveller.shift(timedelta(seconds=30))


def test_idle_gpus_are_warned_then_stopped_with_the_reason(fake, client, idle_rental):
    rental = idle_rental(45)

    run_for(fake, client, IDLE, 34)  # 0 .. 33:30 idle
    assert fresh(rental).status == S.ACTIVE
    assert not events(rental, EventKind.WARNING)
    run_for(fake, client, IDLE, 2)  # through 35 min: ten minutes before the stop
    (warning,) = events(rental, EventKind.WARNING)
    assert "stops in 10 min" in warning.reason
    run_for(fake, client, IDLE, 9)  # through 44:30
    assert fresh(rental).status == S.ACTIVE
    run_for(fake, client, IDLE, 1)  # 45:00
    rental = fresh(rental)
    assert rental.status == S.STOPPING
    (stop,) = [e for e in events(rental, EventKind.TRANSITION) if e.to_status == S.STOPPING]
    assert stop.reason == "idle for 45 min"
    idle_enforce()  # a second loop, or a pass repeated after a takeover: nothing twice
    assert len(events(rental, EventKind.WARNING)) == 1
    assert RentalEvent.objects.filter(rental=rental, kind=EventKind.IDLE_STOP).count() == 1


def test_heartbeats_without_utilisation_never_count_as_idle(fake, client, idle_rental):
    rental = idle_rental(5)
    run_for(fake, client, NO_UTIL, 30)
    run_for(fake, client, {"gpus": []}, 30)
    rental = fresh(rental)
    assert rental.status == S.ACTIVE and rental.idle_since is None
    assert not events(rental, EventKind.WARNING)


def test_a_busy_or_unmeasured_heartbeat_starts_the_count_again(fake, client, idle_rental):
    rental = idle_rental(20)
    run_for(fake, client, IDLE, 15)  # warned at 10 min
    assert len(events(rental, EventKind.WARNING)) == 1
    beat(client, BUSY)
    assert fresh(rental).idle_since is None and fresh(rental).idle_warned_at is None
    run_for(fake, client, IDLE, 15)
    beat(client, NO_UTIL)
    run_for(fake, client, IDLE, 15)
    assert fresh(rental).status == S.ACTIVE  # never 20 idle minutes in a row
    run_for(fake, client, IDLE, 6)
    assert fresh(rental).status == S.STOPPING
    assert len(events(rental, EventKind.WARNING)) == 3  # one per idle stretch that got near


def test_off_means_never(fake, client, idle_rental):
    rental = idle_rental(None)
    run_for(fake, client, IDLE, 120)
    assert fresh(rental).status == S.ACTIVE


# -------------------------------------------------------------------- the setting
def rent(api_client, offer, captured, **body):
    payload = {"offer_id": str(offer.pk), "reservation_hours": 2, **body}
    with captured(execute=True):
        return api_client.post("/api/v1/sessions", payload, format="json")


def test_the_team_default_applies_unless_the_user_sets_or_clears_it(
    api_client, offer, settings, django_capture_on_commit_callbacks
):
    settings.SHOPPER_IDLE_STOP_MINUTES = 30
    default = rent(api_client, offer, django_capture_on_commit_callbacks)
    assert default.status_code == 201, default.content
    assert default.json()["idle_stop_minutes"] == 30
    given = rent(api_client, offer, django_capture_on_commit_callbacks, idle_stop_minutes=90)
    assert given.json()["idle_stop_minutes"] == 90
    off = rent(api_client, offer, django_capture_on_commit_callbacks, idle_stop_minutes=None)
    assert off.json()["idle_stop_minutes"] is None
    settings.SHOPPER_IDLE_STOP_MINUTES = None
    unset = rent(api_client, offer, django_capture_on_commit_callbacks)
    assert unset.json()["idle_stop_minutes"] is None


@pytest.mark.parametrize("bad", [0, -5, 1441, "soon", 2.5, True])
def test_a_bad_idle_stop_at_rent_time_is_a_400_and_rents_nothing(
    api_client, offer, django_capture_on_commit_callbacks, bad
):
    response = rent(api_client, offer, django_capture_on_commit_callbacks, idle_stop_minutes=bad)
    assert response.status_code == 400, response.content
    assert "idle_stop_minutes" in response.json()["errors"]
    assert not Rental.objects.exists()


def test_the_api_sets_and_clears_it_on_a_session(api_client, idle_rental, other_user, token_client):
    rental = idle_rental(None)
    url = f"/api/v1/sessions/{rental.pk}"
    r = api_client.patch(url, {"idle_stop_minutes": 15}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["idle_stop_minutes"] == 15 and fresh(rental).idle_stop_minutes == 15
    cleared = api_client.patch(url, {"idle_stop_minutes": None}, format="json")
    assert cleared.json()["idle_stop_minutes"] is None
    assert fresh(rental).idle_stop_minutes is None

    for bad in ({"idle_stop_minutes": 0}, {"idle_stop_minutes": "x"}, {}):
        r = api_client.patch(url, bad, format="json")
        assert r.status_code == 400, (bad, r.content)
    other = token_client(other_user, "o")
    assert other.patch(url, {"idle_stop_minutes": 5}, format="json").status_code == 404
    assert fresh(rental).idle_stop_minutes is None  # nothing changed

    Rental.objects.filter(pk=rental.pk).update(status=S.DESTROYED)
    r = api_client.patch(url, {"idle_stop_minutes": 5}, format="json")
    assert r.status_code == 409 and r.json()["code"] == "already_ended"


def test_the_session_page_sets_and_clears_it(client_logged_in, idle_rental):
    rental = idle_rental(None)
    url = f"/sessions/{rental.pk}/idle-stop/"
    page = client_logged_in.get(f"/sessions/{rental.pk}/")
    assert b"Idle stop" in page.content and url.encode() in page.content

    client_logged_in.post(url, {"idle_stop_minutes": "45"})
    assert fresh(rental).idle_stop_minutes == 45
    response = client_logged_in.post(url, {"idle_stop_minutes": "0"}, follow=True)
    assert b"1 to 1440" in response.content and fresh(rental).idle_stop_minutes == 45
    client_logged_in.post(url, {"idle_stop_minutes": ""})
    assert fresh(rental).idle_stop_minutes is None
    assert [e.reason for e in events(rental, EventKind.INFO)][-2:] == [
        "Idle stop set to 45 min by alice",
        "Idle stop turned off by alice",
    ]
