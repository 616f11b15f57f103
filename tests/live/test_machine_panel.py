"""The session page's Machine panel follows the rental while the page is open.

The instance id arrives with provisioning -> booting and the SSH host and port with booting ->
verifying; both the websocket push and the polling fallback must carry the panel, or the user
only sees them after a reload.
"""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from sessions import live, services
from sessions.models import Rental, Status
from tests.factories import RentalFactory
from tests.live.test_live import cookie_for, finish, receive, receive_until, socket, transition

pytestmark = pytest.mark.django_db(transaction=True)


def machine_panel(html: str, rental: Rental) -> str:
    """The <aside> of the Machine panel in ``html`` (a page, a poll answer or a push)."""
    found = re.search(rf'<aside id="rental-{rental.pk}-machine"[^>]*>.*?</aside>', html, re.S)
    assert found, "no machine panel in the html"
    return found.group(0)


def test_the_push_carries_the_machine_panel_with_the_instance_and_then_the_host(user):
    rental = RentalFactory(consumer=user, status=Status.PROVISIONING)
    cookie = cookie_for(user)

    async def run():
        comm = socket(cookie, rental=rental.pk)
        assert (await comm.connect())[0]
        assert (await receive(comm))["type"] == "hello"

        # As the worker does: the id is stored, then provisioning -> booting.
        await transition(rental, Status.BOOTING, reason="Instance 4242 created", provider_instance_id="4242")
        msg = await receive_until(comm, lambda m: m.get("html"))
        panel = machine_panel(msg["html"], rental)
        assert 'hx-swap-oob="true"' in panel
        assert "<code>4242</code>" in panel and "SSH port" not in panel

        await transition(
            rental, Status.VERIFYING, reason="Running; checking SSH", ssh_host="203.0.113.9", ssh_port=40123
        )
        msg = await receive_until(comm, lambda m: m.get("html") and "203.0.113.9" in m["html"])
        panel = machine_panel(msg["html"], rental)
        assert "<code>203.0.113.9</code>" in panel and "<code>40123</code>" in panel
        await finish(comm)

    async_to_sync(run)()


def test_the_poll_answer_carries_the_machine_panel_once_the_rental_has_an_instance(user):
    rental = RentalFactory(consumer=user, status=Status.PROVISIONING)
    page = Client()
    page.force_login(user)
    url = f"/sessions/{rental.pk}/"

    before = page.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert "Instance</dt>" not in machine_panel(before, rental)

    services.rental_transition(
        rental, Status.BOOTING, reason="Instance 4242 created", provider_instance_id="4242"
    )
    services.rental_transition(
        rental, Status.VERIFYING, reason="Running; checking SSH", ssh_host="203.0.113.9", ssh_port=40123
    )
    polled = page.get(url, HTTP_HX_REQUEST="true").content.decode()
    panel = machine_panel(polled, rental)
    assert 'hx-swap-oob="true"' in panel
    assert "<code>4242</code>" in panel
    assert "<code>203.0.113.9</code>" in panel and "<code>40123</code>" in panel


def test_the_page_panel_has_the_id_the_fragments_swap_into(user):
    rental = RentalFactory(consumer=user, status=Status.BOOTING, provider_instance_id="4242")
    page = Client()
    page.force_login(user)
    full = page.get(f"/sessions/{rental.pk}/").content.decode()
    panel = machine_panel(full, rental)
    assert full.count(f'id="rental-{rental.pk}-machine"') == 1
    assert "hx-swap-oob" not in panel  # on the page itself it is plain content
    pushed = machine_panel(live.render_rental(rental, owner_view=True), rental)
    assert "<code>4242</code>" in panel and "<code>4242</code>" in pushed
