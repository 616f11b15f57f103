"""Live updates end to end through the real ASGI app: websocket auth, groups, the outbox relay.

Events are written with ``services.rental_transition``, as the worker does; the relay of the
test's event loop must find them in the database and push the rendered fragments.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from sessions import live, services
from sessions.models import RentalEvent, Status
from shopper.asgi import application
from tests.factories import RentalFactory

pytestmark = pytest.mark.django_db(transaction=True)

DEADLINE = 2.0  # DESIGN.md: a worker's change reaches an open page within 2 s


def cookie_for(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def socket(cookie: str | None = None, **query) -> WebsocketCommunicator:
    path = "/ws/rentals/"
    if query:
        path += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if cookie is not None:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


@pytest.fixture
def user_cookie(user) -> str:
    return cookie_for(user)


@pytest.fixture
def staff_cookie(staff) -> str:
    return cookie_for(staff)


async def receive(comm, timeout=DEADLINE) -> dict:
    return json.loads(await comm.receive_from(timeout=timeout))


async def receive_until(comm, predicate, timeout=DEADLINE) -> dict:
    """The first message matching ``predicate``, skipping others, within ``timeout`` overall."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await receive(comm, timeout=max(0.01, deadline - time.monotonic()))
        if predicate(msg):
            return msg


async def finish(*comms) -> None:
    for comm in comms:
        await comm.disconnect()
    await live.get_relay().stop()


transition = database_sync_to_async(services.rental_transition)


# --------------------------------------------------------------------------------------------
# Who may connect
# --------------------------------------------------------------------------------------------
def test_an_anonymous_socket_is_closed_4401():
    async def run():
        comm = socket()
        assert await comm.connect() == (False, 4401)

    async_to_sync(run)()


def test_someone_elses_rental_is_closed_4404_and_their_list_socket_hears_nothing(user, other_user):
    rental = RentalFactory(consumer=user, status=Status.BOOTING)
    cookie_user = cookie_for(other_user)

    async def run():
        comm = socket(cookie_user, rental=rental.pk)
        assert await comm.connect() == (False, 4404)
        bad = socket(cookie_user, rental="not-a-uuid")
        assert await bad.connect() == (False, 4404)

        listing = socket(cookie_user)
        assert (await listing.connect())[0]
        assert (await receive(listing))["type"] == "hello"
        await transition(rental, Status.VERIFYING, reason="Booted")
        assert await listing.receive_nothing(timeout=1.5)
        await finish(listing)

    async_to_sync(run)()


# --------------------------------------------------------------------------------------------
# Pushes
# --------------------------------------------------------------------------------------------
def test_the_owner_sees_a_workers_change_within_two_seconds(user, user_cookie):
    rental = RentalFactory(consumer=user, status=Status.BOOTING)
    first = RentalEvent.objects.create(rental=rental, from_status="provisioning", to_status="booting")

    async def run():
        comm = socket(user_cookie, rental=rental.pk, since=first.pk)
        assert (await comm.connect())[0]
        assert await receive(comm) == {"type": "hello", "event": first.pk}
        started = time.monotonic()
        await transition(rental, Status.VERIFYING, reason="Booted; checking SSH login")
        msg = await receive_until(comm, lambda m: m.get("html"))
        elapsed = time.monotonic() - started
        assert elapsed < DEADLINE
        event = await database_sync_to_async(RentalEvent.objects.latest)("id")
        assert (
            msg["type"] == "rental.changed" and msg["rental"] == str(rental.pk) and msg["event"] == event.pk
        )
        html = msg["html"]
        assert f'id="rental-{rental.pk}-status"' in html and f'id="rental-{rental.pk}-timeline"' in html
        assert html.count('hx-swap-oob="true"') == 3  # status, timeline, machine panel
        assert "status-verifying" in html and "Booted; checking SSH login" in html
        # The list notice for the user group comes too (the list table re-fetches on it).
        notice = await receive_until(comm, lambda m: m["type"] == "rental.changed" and not m["html"])
        assert notice["rental"] == str(rental.pk)
        await finish(comm)

    async_to_sync(run)()


def test_the_owner_fragment_is_the_page_fragment(user):
    rental = RentalFactory(consumer=user, reachable=True)
    html = live.render_rental(rental, owner_view=True)
    page = Client()
    page.force_login(user)
    polled = page.get(f"/sessions/{rental.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert rental.ssh_command in html and rental.ssh_command in polled
    assert 'hx-trigger="every 3s"' in html and "data-live-poll" in html  # the poll survives a push


def test_a_list_socket_hears_about_each_of_its_rentals(user, user_cookie):
    rental = RentalFactory(consumer=user, status=Status.BOOTING)

    async def run():
        comm = socket(user_cookie)
        assert (await comm.connect())[0]
        assert (await receive(comm))["type"] == "hello"
        await transition(rental, Status.STOPPING, reason="Done")
        msg = await receive(comm)
        assert msg["type"] == "rental.changed" and msg["rental"] == str(rental.pk) and msg["html"] == ""
        await finish(comm)

    async_to_sync(run)()


def test_staff_may_watch_any_rental_without_the_owners_key_link(user, user_cookie, staff_cookie):
    rental = RentalFactory(consumer=user, status=Status.BOOTING, with_key=True)

    async def run():
        watcher = socket(staff_cookie, rental=rental.pk)
        owner = socket(user_cookie, rental=rental.pk)
        everyone = socket(staff_cookie)
        for comm in (watcher, owner, everyone):
            assert (await comm.connect())[0]
            assert (await receive(comm))["type"] == "hello"
        await transition(rental, Status.VERIFYING, reason="Booted")
        seen = await receive_until(watcher, lambda m: m.get("html"))
        mine = await receive_until(owner, lambda m: m.get("html"))
        notice = await receive(everyone)
        assert "status-verifying" in seen["html"] and "status-verifying" in mine["html"]
        assert f"/sessions/{rental.pk}/ssh-key/" in mine["html"]
        assert f"/sessions/{rental.pk}/ssh-key/" not in seen["html"]
        assert notice["rental"] == str(rental.pk)
        await finish(watcher, owner, everyone)

    async_to_sync(run)()


# --------------------------------------------------------------------------------------------
# Reconnecting
# --------------------------------------------------------------------------------------------
def test_a_reconnect_with_an_old_since_gets_the_current_state_at_once(user, user_cookie):
    rental = RentalFactory(consumer=user, status=Status.BOOTING)
    seen = RentalEvent.objects.create(rental=rental, from_status="provisioning", to_status="booting")
    # While the page was offline, the worker moved on.
    services.rental_transition(rental, Status.VERIFYING, reason="Booted")
    services.rental_transition(rental, Status.ACTIVE, reason="SSH login verified")
    latest = RentalEvent.objects.latest("id").pk

    async def run():
        comm = socket(user_cookie, rental=rental.pk, since=seen.pk)
        assert (await comm.connect())[0]
        msg = await receive(comm, timeout=0.5)  # immediately, not on the next relay tick
        assert msg["type"] == "rental.changed" and msg["event"] == latest
        assert "status-active" in msg["html"] and "SSH login verified" in msg["html"]
        assert await receive(comm) == {"type": "hello", "event": latest}

        # Up to date: only the hello.
        again = socket(user_cookie, rental=rental.pk, since=latest)
        assert (await again.connect())[0]
        assert await receive(again) == {"type": "hello", "event": latest}
        assert await again.receive_nothing(timeout=0.8)

        # The list page catches up the same way, with a bare notice.
        listing = socket(user_cookie, since=seen.pk)
        assert (await listing.connect())[0]
        msg = await receive(listing, timeout=0.5)
        assert msg["type"] == "rental.changed" and msg["html"] == "" and msg["event"] == latest
        await finish(comm, again, listing)

    async_to_sync(run)()


# --------------------------------------------------------------------------------------------
# The relay itself
# --------------------------------------------------------------------------------------------
def test_the_relay_renders_only_for_watched_rentals_and_relays_late_commits(user, other_user, monkeypatch):
    watched_rental = RentalFactory(consumer=user, status=Status.BOOTING)
    other = RentalFactory(consumer=other_user, status=Status.BOOTING)
    relay = live.Relay()
    relay._floor = 0
    watched = {live.rental_group(watched_rental.pk, owner_view=True), live.user_group(user.pk)}
    rendered: list = []
    real_render = live.render_rental
    monkeypatch.setattr(live, "render_rental", lambda r, **kw: rendered.append(r.pk) or real_render(r, **kw))

    RentalEvent.objects.create(id=100, rental=watched_rental, to_status="booting")
    RentalEvent.objects.create(id=101, rental=other, to_status="booting")
    out = relay.poll(watched)
    assert [name for name, _ in out] == [
        live.rental_group(watched_rental.pk, owner_view=True),
        live.user_group(user.pk),
    ]
    assert rendered == [watched_rental.pk]
    assert relay.poll(watched) == []  # nothing new: nothing sent twice

    # A lower id that commits late (PostgreSQL sequences) is still relayed, once.
    RentalEvent.objects.create(id=50, rental=watched_rental, to_status="verifying")
    out = relay.poll(watched)
    assert [json.loads(text)["event"] for _, text in out] == [50, 50]
    assert relay.poll(watched) == []

    # Past the reorder window the floor rises over what was seen.
    monkeypatch.setattr(live, "REORDER_WINDOW_SECONDS", -1)
    relay.poll(watched)
    assert relay._floor == 101 and relay._seen == {}


def test_the_relay_stops_when_the_last_socket_leaves(user_cookie):
    async def run():
        comm = socket(user_cookie)
        assert (await comm.connect())[0]
        relay = live.get_relay()
        task = relay._task
        assert task is not None and not task.done()
        await comm.disconnect()
        assert not relay.watchers
        for _ in range(40):
            if task.done():
                break
            await asyncio.sleep(0.05)
        assert task.done()

    async_to_sync(run)()


# --------------------------------------------------------------------------------------------
# The pages wire it up
# --------------------------------------------------------------------------------------------
def test_the_pages_carry_the_socket_and_the_since(client, user):
    rental = RentalFactory(consumer=user, status=Status.BOOTING)
    event = RentalEvent.objects.create(rental=rental, to_status="booting")
    client.force_login(user)
    detail = client.get(f"/sessions/{rental.pk}/").content.decode()
    assert f'data-live-url="/ws/rentals/?rental={rental.pk}" data-live-since="{event.pk}"' in detail
    assert "js/live.js" in detail
    listing = client.get("/sessions/").content.decode()
    assert 'data-live-url="/ws/rentals/"' in listing
    assert 'hx-trigger="rental-changed from:body delay:500ms"' in listing
    fragment = client.get("/sessions/?status=live", HTTP_HX_REQUEST="true").content.decode()
    assert 'hx-get="/sessions/?status=live"' in fragment  # the re-fetch keeps the filter
