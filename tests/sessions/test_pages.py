"""The browser pages for renting and running sessions, with the provider faked at the registry."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.utils import timezone

from sessions import keys
from sessions.models import EventKind, Rental, RentalEvent, SSHKey, Status
from tests.factories import RentalFactory, SSHKeyFactory

pytestmark = pytest.mark.django_db

VALID_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq7vQ7N4fK8m0s6p7D0J8u1g9xk8aZq6JQnq1m6tq1a me@laptop"
OTHER_KEY = keys.keypair_generate("desk")[0]


@pytest.fixture(autouse=True)
def provider(fake_cloud, enqueued):
    """The fake provider of this module's offer: o-1, 2 × RTX 4090 24GB at $1.20/h."""
    cloud = fake_cloud("pagecloud", "Page Cloud")
    cloud.add_offer("o-1", "1.2000", gpu_count=2)
    return cloud


@pytest.fixture
def offer(make_offer):
    return make_offer(provider="pagecloud", provider_offer_id="o-1", gpu_count=2, price_per_hour="1.2000")


def rent_form(client, offer, **data):
    page = client.get(f"/offers/{offer.pk}/rent/")
    token = page.context["form"].initial["form_token"]
    payload = {
        "reservation_hours": "2",
        "key_source": "generate",
        "expected_price": "1.2000",
        "form_token": str(token),
        **data,
    }
    return payload


def post_rent(client, offer, django_capture_on_commit_callbacks, **data):
    payload = rent_form(client, offer, **data)
    with django_capture_on_commit_callbacks(execute=True):
        return client.post(f"/offers/{offer.pk}/rent/", payload)


# --------------------------------------------------------------------------------------------
# Login and ownership on every page
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/offers/1/rent/"),
        ("get", "/sessions/"),
        ("get", "/sessions/{id}/"),
        ("get", "/sessions/{id}/ssh-key/"),
        ("post", "/sessions/{id}/done/"),
        ("post", "/sessions/{id}/shutdown/"),
        ("get", "/keys/"),
        ("post", "/keys/1/delete/"),
    ],
)
def test_anonymous_visitors_are_sent_to_login(client, user, method, path):
    rental = RentalFactory(consumer=user, reachable=True)
    response = getattr(client, method)(path.format(id=rental.pk))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
    assert Rental.objects.get().status == Status.ACTIVE


@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/sessions/{id}/"),
        ("get", "/sessions/{id}/ssh-key/"),
        ("post", "/sessions/{id}/done/"),
        ("post", "/sessions/{id}/shutdown/"),
    ],
)
def test_another_users_session_is_a_404(client, user, other_user, method, path, enqueued):
    rental = RentalFactory(consumer=user, reachable=True, with_key=True)
    client.force_login(other_user)
    response = getattr(client, method)(path.format(id=rental.pk))
    assert response.status_code == 404
    rental.refresh_from_db()
    assert rental.status == Status.ACTIVE and not enqueued
    assert not rental.events.exists()


def test_the_list_shows_only_my_sessions(client_logged_in, user, other_user):
    mine = RentalFactory(consumer=user, reachable=True, gpu_type="H100 SXM 80GB")
    RentalFactory(consumer=other_user, reachable=True, gpu_type="A100 PCIE 40GB")
    html = client_logged_in.get("/sessions/").content.decode()
    assert "H100 SXM 80GB" in html and "A100 PCIE 40GB" not in html
    assert f"/sessions/{mine.pk}/" in html
    assert "Consumer" not in html


def test_staff_see_everyones_sessions_with_the_consumer(client, staff, user, other_user):
    RentalFactory(consumer=user, reachable=True, gpu_type="H100 SXM 80GB")
    RentalFactory(consumer=other_user, reachable=True, gpu_type="A100 PCIE 40GB")
    client.force_login(staff)
    html = client.get("/sessions/").content.decode()
    assert "H100 SXM 80GB" in html and "A100 PCIE 40GB" in html
    assert "Consumer" in html and "alice" in html and "bob" in html


def test_the_list_filters_by_status_and_shows_cost_so_far(client_logged_in, user):
    RentalFactory(
        consumer=user,
        reachable=True,
        gpu_type="H100 SXM 80GB",
        price_per_hour=Decimal("1.2000"),
        active_since=timezone.now() - timedelta(minutes=90),
    )
    RentalFactory(consumer=user, status=Status.DESTROYED, gpu_type="A100 PCIE 40GB", ended_at=timezone.now())
    html = client_logged_in.get("/sessions/", {"status": "active"}).content.decode()
    assert "H100 SXM 80GB" in html and "A100 PCIE 40GB" not in html
    assert "$1.80" in html  # 1.20/h × 1.5 h
    html = client_logged_in.get("/sessions/", {"status": "live"}).content.decode()
    assert "A100 PCIE 40GB" not in html
    html = client_logged_in.get("/sessions/", {"status": "destroyed"}).content.decode()
    assert "A100 PCIE 40GB" in html and "H100 SXM 80GB" not in html


def test_an_unknown_status_filter_is_explained_not_a_500(client_logged_in, user):
    RentalFactory(consumer=user, reachable=True)
    response = client_logged_in.get("/sessions/", {"status": "sleeping"})
    assert response.status_code == 200
    assert "Unknown status" in response.content.decode()


def test_an_htmx_request_gets_only_the_table(client_logged_in, user):
    RentalFactory(consumer=user, reachable=True)
    html = client_logged_in.get("/sessions/", HTTP_HX_REQUEST="true").content.decode()
    assert html.lstrip().startswith('<section id="rental-table"') and "<html" not in html


# --------------------------------------------------------------------------------------------
# Detail
# --------------------------------------------------------------------------------------------
def test_the_owner_sees_status_ssh_command_key_link_and_timeline(client_logged_in, user):
    rental = RentalFactory(
        consumer=user, reachable=True, with_key=True, status_detail="SSH login verified; the machine is yours"
    )
    RentalEvent.objects.create(rental=rental, from_status="verifying", to_status="active", reason="SSH ok")
    response = client_logged_in.get(f"/sessions/{rental.pk}/")
    html = response.content.decode()
    assert response.status_code == 200
    assert f'id="rental-{rental.pk}-status"' in html and f'id="rental-{rental.pk}-timeline"' in html
    assert "SSH login verified" in html
    assert rental.ssh_command in html and "-p 40022 root@203.0.113.7" in rental.ssh_command
    assert f"~/.ssh/{rental.key_filename}" in html
    assert f"/sessions/{rental.pk}/ssh-key/" in html
    assert 'hx-trigger="every 3s"' in html
    assert "Done — shut it down" in html and "Force shutdown" in html
    assert "SSH ok" in html


def test_the_ssh_command_waits_for_active(client_logged_in, user):
    rental = RentalFactory(consumer=user, status=Status.BOOTING, ssh_host="203.0.113.7", ssh_port=40022)
    html = client_logged_in.get(f"/sessions/{rental.pk}/").content.decode()
    assert "ssh -p 40022" not in html
    assert "appears here as soon as the machine is ready" in html


def test_staff_see_someones_session_without_the_key_link(client, staff, user):
    rental = RentalFactory(consumer=user, reachable=True, with_key=True)
    client.force_login(staff)
    response = client.get(f"/sessions/{rental.pk}/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "rented by <strong>alice</strong>" in html
    assert f"/sessions/{rental.pk}/ssh-key/" not in html
    assert "Force shutdown" in html


def test_a_terminal_session_does_not_poll(client_logged_in, user):
    rental = RentalFactory(consumer=user, status=Status.DESTROYED, ended_at=timezone.now())
    html = client_logged_in.get(f"/sessions/{rental.pk}/").content.decode()
    assert "hx-trigger" not in html
    assert "Force shutdown" not in html
    response = client_logged_in.get(f"/sessions/{rental.pk}/", HTTP_HX_REQUEST="true")
    assert response.status_code == 286  # htmx stops polling


def test_the_poll_returns_the_status_fragment_and_the_timeline_out_of_band(client_logged_in, user):
    rental = RentalFactory(consumer=user, status=Status.BOOTING)
    response = client_logged_in.get(f"/sessions/{rental.pk}/", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert html.lstrip().startswith(f'<section id="rental-{rental.pk}-status"')
    assert f'id="rental-{rental.pk}-timeline" class="card" hx-swap-oob="true"' in html


def test_an_unchanged_poll_is_a_204(client_logged_in, user):
    rental = RentalFactory(consumer=user, status=Status.BOOTING)
    event = RentalEvent.objects.create(rental=rental, to_status="booting", reason="x")
    url = f"/sessions/{rental.pk}/"
    assert (
        client_logged_in.get(url, {"v": f"booting:{event.pk}:0.00"}, HTTP_HX_REQUEST="true").status_code
        == 204
    )
    later = RentalEvent.objects.create(rental=rental, kind=EventKind.INFO, reason="news")
    response = client_logged_in.get(url, {"v": f"booting:{event.pk}:0.00"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "news" in response.content.decode()
    assert f"booting:{later.pk}:0.00" in response.content.decode()


def test_the_running_cost_refreshes_on_the_session_page(client_logged_in, user):
    """Issue 5: each session page shows its running cost live (the poll answers when it moves)."""
    from datetime import timedelta

    import time_machine
    from django.utils import timezone

    start = timezone.now()
    rental = RentalFactory(consumer=user, reachable=True)
    Rental.objects.filter(pk=rental.pk).update(active_since=start, price_per_hour=Decimal("3.6000"))
    event = RentalEvent.objects.create(rental=rental, to_status="active", reason="x")
    url = f"/sessions/{rental.pk}/"
    with time_machine.travel(start + timedelta(seconds=60), tick=False):
        response = client_logged_in.get(url, {"v": f"active:{event.pk}:0.00"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "$0.06" in response.content.decode()


def test_a_bad_session_id_is_a_404(client_logged_in):
    assert client_logged_in.get(f"/sessions/{uuid.uuid4()}/").status_code == 404
    assert client_logged_in.get("/sessions/not-a-uuid/").status_code == 404


# --------------------------------------------------------------------------------------------
# Done and force shutdown
# --------------------------------------------------------------------------------------------
def test_done_moves_to_stopping_and_enqueues_teardown(
    client_logged_in, user, enqueued, django_capture_on_commit_callbacks
):
    rental = RentalFactory(consumer=user, reachable=True)
    with django_capture_on_commit_callbacks(execute=True):
        response = client_logged_in.post(f"/sessions/{rental.pk}/done/")
    assert response.status_code == 302 and response["Location"] == f"/sessions/{rental.pk}/"
    rental.refresh_from_db()
    assert rental.status == Status.STOPPING
    assert enqueued == [("sessions.tasks.teardown", rental.pk)]
    event = rental.events.get(to_status="stopping")
    assert event.reason == "Done: the work is finished" and event.actor == user


def test_done_again_is_a_message_not_a_500(client_logged_in, user, enqueued):
    rental = RentalFactory(consumer=user, status=Status.DESTROYED, ended_at=timezone.now())
    response = client_logged_in.post(f"/sessions/{rental.pk}/done/", follow=True)
    assert response.status_code == 200
    assert "already ended" in response.content.decode()
    assert not enqueued


def test_done_while_stopping_changes_nothing(client_logged_in, user, enqueued):
    rental = RentalFactory(consumer=user, status=Status.STOPPING)
    response = client_logged_in.post(f"/sessions/{rental.pk}/done/")
    assert response.status_code == 302
    assert not enqueued and not rental.events.exists()


def test_htmx_done_returns_the_updated_status_fragment(
    client_logged_in, user, django_capture_on_commit_callbacks
):
    rental = RentalFactory(consumer=user, reachable=True)
    with django_capture_on_commit_callbacks(execute=True):
        response = client_logged_in.post(f"/sessions/{rental.pk}/done/", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith(f'<section id="rental-{rental.pk}-status"')
    assert "status-stopping" in html and "Done: the work is finished" in html


def test_htmx_done_on_an_ended_session_says_so(client_logged_in, user):
    rental = RentalFactory(consumer=user, status=Status.FAILED, ended_at=timezone.now())
    response = client_logged_in.post(f"/sessions/{rental.pk}/done/", HTTP_HX_REQUEST="true")
    assert response.status_code == 286
    assert "already ended" in response.content.decode()


def test_staff_can_force_shutdown_someones_session(
    client, staff, user, enqueued, django_capture_on_commit_callbacks
):
    rental = RentalFactory(consumer=user, reachable=True)
    client.force_login(staff)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/sessions/{rental.pk}/shutdown/")
    assert response.status_code == 302
    rental.refresh_from_db()
    assert rental.status == Status.STOPPING
    event = rental.events.get(to_status="stopping")
    assert event.reason == "Force shutdown by carol" and event.actor == staff
    assert enqueued == [("sessions.tasks.teardown", rental.pk)]


def test_stopping_needs_a_post(client_logged_in, user):
    rental = RentalFactory(consumer=user, reachable=True)
    assert client_logged_in.get(f"/sessions/{rental.pk}/done/").status_code == 405
    assert Rental.objects.get().status == Status.ACTIVE


# --------------------------------------------------------------------------------------------
# Private key download
# --------------------------------------------------------------------------------------------
def test_the_owner_downloads_the_key_and_it_is_audited(client_logged_in, user):
    rental = RentalFactory(consumer=user, reachable=True, with_key=True)
    response = client_logged_in.get(f"/sessions/{rental.pk}/ssh-key/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response["Content-Disposition"] == f'attachment; filename="shopper-{str(rental.pk)[:8]}.pem"'
    assert response.content.decode() == keys.secret_decrypt(rental.ssh_private_key_encrypted)
    assert response.content.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    event = rental.events.get(kind=EventKind.KEY_DOWNLOAD)
    assert event.actor == user


def test_staff_cannot_download_someones_key(client, staff, user):
    rental = RentalFactory(consumer=user, reachable=True, with_key=True)
    client.force_login(staff)
    assert client.get(f"/sessions/{rental.pk}/ssh-key/").status_code == 404
    assert not rental.events.exists()


def test_the_key_is_gone_after_teardown(client_logged_in, user):
    rental = RentalFactory(
        consumer=user, status=Status.DESTROYED, ended_at=timezone.now(), ssh_public_key=VALID_KEY
    )
    response = client_logged_in.get(f"/sessions/{rental.pk}/ssh-key/")
    assert response.status_code == 410
    assert "deleted" in response.content.decode()
    assert not rental.events.exists()


def test_no_generated_key_is_a_404(client_logged_in, user):
    rental = RentalFactory(consumer=user, reachable=True, ssh_public_key=VALID_KEY)
    assert client_logged_in.get(f"/sessions/{rental.pk}/ssh-key/").status_code == 404


# --------------------------------------------------------------------------------------------
# Renting
# --------------------------------------------------------------------------------------------
def test_the_rent_page_shows_the_offer_and_the_estimate(client_logged_in, offer):
    response = client_logged_in.get(f"/offers/{offer.pk}/rent/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "RTX 4090 24GB" in html and "pagecloud" in html and "Oregon, US" in html
    assert "$1.2000/h" in html
    assert 'name="expected_price" value="1.2000"' in html
    assert 'id="rent-estimate"' in html and "$2.40" in html  # 2 h × 1.20
    assert "Generate a new key pair for me" in html and "registered" not in html


def test_the_estimate_follows_the_hours(client_logged_in, offer):
    response = client_logged_in.get(
        f"/offers/{offer.pk}/rent/estimate/", {"reservation_hours": "3.5"}, HTTP_HX_REQUEST="true"
    )
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="rent-estimate"') and "$4.20" in html
    html = client_logged_in.get(f"/offers/{offer.pk}/rent/estimate/", {"reservation_hours": "x"}).content
    assert b"$" not in html.split(b"Estimated cost")[1].split(b"</strong>")[0]


def test_users_with_registered_keys_may_use_them(client_logged_in, user, offer):
    SSHKeyFactory(user=user, public_key=VALID_KEY)
    html = client_logged_in.get(f"/offers/{offer.pk}/rent/").content.decode()
    assert "Use my registered key (1)" in html and "laptop" in html


def test_renting_redirects_to_the_new_pending_session(
    client_logged_in, user, offer, enqueued, django_capture_on_commit_callbacks
):
    response = post_rent(client_logged_in, offer, django_capture_on_commit_callbacks)
    rental = Rental.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/sessions/{rental.pk}/"
    assert rental.status == Status.PENDING and rental.consumer == user
    assert rental.has_generated_key
    assert enqueued == [("sessions.tasks.provision", rental.pk)]
    html = client_logged_in.get(response["Location"]).content.decode()
    assert "download the private key" in html and f"/sessions/{rental.pk}/ssh-key/" in html


def test_renting_with_a_pasted_key(client_logged_in, offer, django_capture_on_commit_callbacks):
    response = post_rent(
        client_logged_in,
        offer,
        django_capture_on_commit_callbacks,
        key_source="paste",
        ssh_public_key=VALID_KEY,
    )
    assert response.status_code == 302
    rental = Rental.objects.get()
    assert rental.ssh_public_key == VALID_KEY and not rental.has_generated_key


def test_renting_with_registered_keys(client_logged_in, user, offer, django_capture_on_commit_callbacks):
    SSHKeyFactory(user=user, public_key=VALID_KEY)
    response = post_rent(client_logged_in, offer, django_capture_on_commit_callbacks, key_source="registered")
    assert response.status_code == 302
    rental = Rental.objects.get()
    assert rental.ssh_public_key == VALID_KEY and not rental.has_generated_key


def test_htmx_renting_redirects_the_browser(client_logged_in, offer, django_capture_on_commit_callbacks):
    payload = rent_form(client_logged_in, offer)
    with django_capture_on_commit_callbacks(execute=True):
        response = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload, HTTP_HX_REQUEST="true")
    assert response["HX-Redirect"] == f"/sessions/{Rental.objects.get().pk}/"


@pytest.mark.parametrize(
    "data,message",
    [
        ({"reservation_hours": "0"}, "more than 0 hours"),
        ({"reservation_hours": "-1"}, "more than 0 hours"),
        ({"reservation_hours": "1000"}, "at most 12 hours"),
        ({"reservation_hours": "abc"}, "Give the reservation in hours"),
        ({"reservation_hours": ""}, "Give the reservation in hours"),
        ({"key_source": "paste", "ssh_public_key": "ssh-rsa not-base64!"}, "not a valid SSH public key"),
        ({"key_source": "paste", "ssh_public_key": "hello world"}, "Unsupported SSH key type"),
        ({"key_source": "paste", "ssh_public_key": ""}, "The SSH public key is empty"),
        ({"key_source": "registered"}, "Select a valid choice"),
        ({"form_token": ""}, "reload the page"),
    ],
)
def test_bad_input_is_explained_and_rents_nothing(client_logged_in, offer, enqueued, data, message):
    payload = rent_form(client_logged_in, offer, **data)
    response = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Rental.objects.exists() and not enqueued


def test_a_changed_price_is_shown_and_a_second_submit_rents_at_it(
    client_logged_in, offer, provider, django_capture_on_commit_callbacks
):
    provider.add_offer("o-1", "1.5000", gpu_count=2)
    payload = rent_form(client_logged_in, offer)
    response = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)
    html = response.content.decode()
    assert response.status_code == 200
    assert "The price changed from $1.2000/h to $1.5000/h" in html
    assert 'name="expected_price" value="1.5000"' in html
    assert not Rental.objects.exists()
    payload["expected_price"] = response.context["form"]["expected_price"].value()
    with django_capture_on_commit_callbacks(execute=True):
        response = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)
    assert response.status_code == 302
    assert Rental.objects.get().price_per_hour == Decimal("1.5000")


def test_a_vanished_offer_says_so_with_a_link_back(client_logged_in, offer, provider):
    del provider.offers["o-1"]
    response = client_logged_in.post(f"/offers/{offer.pk}/rent/", rent_form(client_logged_in, offer))
    html = response.content.decode()
    assert response.status_code == 200
    assert "no longer available" in html and 'href="/offers/"' in html
    assert not Rental.objects.exists()


def test_an_unavailable_offer_page_says_so(client_logged_in, offer):
    offer.available = False
    offer.save()
    html = client_logged_in.get(f"/offers/{offer.pk}/rent/").content.decode()
    assert "no longer available" in html and "Pick another offer" in html
    assert 'id="rent-form"' not in html


def test_an_unknown_offer_is_a_404(client_logged_in):
    assert client_logged_in.get("/offers/987654/rent/").status_code == 404


def test_the_capacity_limit_is_a_message(client_logged_in, offer, settings):
    settings.SHOPPER_MAX_LIVE_RENTALS = 0
    response = client_logged_in.post(
        f"/offers/{offer.pk}/rent/", rent_form(client_logged_in, offer), follow=True
    )
    # Refusals go through common/pages.py: the message on the rent page it was posted from.
    assert response.redirect_chain == [(f"/offers/{offer.pk}/rent/", 302)]
    assert response.status_code == 200
    assert "limit of 0 live machines" in response.content.decode()
    assert not Rental.objects.exists()


def test_the_capacity_limit_through_htmx_is_a_409_fragment_before_the_form(client_logged_in, offer, settings):
    settings.SHOPPER_MAX_LIVE_RENTALS = 0
    response = client_logged_in.post(
        f"/offers/{offer.pk}/rent/", rent_form(client_logged_in, offer), headers={"HX-Request": "true"}
    )
    assert response.status_code == 409
    assert response["HX-Reswap"] == "beforebegin" and response["X-Refusal"] == "capacity_reached"
    assert "limit of 0 live machines" in response.content.decode()
    assert not Rental.objects.exists()


def test_a_double_submit_creates_one_rental(client_logged_in, offer, django_capture_on_commit_callbacks):
    payload = rent_form(client_logged_in, offer)
    with django_capture_on_commit_callbacks(execute=True):
        first = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)
        second = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)
    rental = Rental.objects.get()
    assert first["Location"] == second["Location"] == f"/sessions/{rental.pk}/"


def test_a_double_submit_is_recognised_in_the_database_not_the_process_cache(
    client_logged_in, offer, django_capture_on_commit_callbacks
):
    """The second submit may land in another web process: nothing of the first one's memory
    (here: a cleared cache) may be needed to find its rental."""
    payload = rent_form(client_logged_in, offer)
    with django_capture_on_commit_callbacks(execute=True):
        first = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)
        cache.clear()
        second = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)
    rental = Rental.objects.get()
    assert rental.request_key == f"form:{payload['form_token']}"
    assert first["Location"] == second["Location"] == f"/sessions/{rental.pk}/"


def test_a_double_submit_after_the_offer_left_the_menu_still_finds_the_rental(
    client_logged_in, offer, django_capture_on_commit_callbacks
):
    payload = rent_form(client_logged_in, offer)
    with django_capture_on_commit_callbacks(execute=True):
        first = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)
    offer.available = False
    offer.save()
    second = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)
    assert second.status_code == 302 and second["Location"] == first["Location"]
    assert Rental.objects.count() == 1


def test_a_failed_submit_can_be_retried_with_the_same_form(
    client_logged_in, offer, provider, django_capture_on_commit_callbacks
):
    del provider.offers["o-1"]
    payload = rent_form(client_logged_in, offer)
    client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)
    provider.add_offer("o-1", "1.2000", gpu_count=2)
    offer.available = True
    offer.save()
    with django_capture_on_commit_callbacks(execute=True):
        response = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)
    assert response.status_code == 302 and Rental.objects.count() == 1


def test_htmx_form_errors_return_only_the_form(client_logged_in, offer):
    payload = rent_form(client_logged_in, offer, reservation_hours="0")
    response = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<form id="rent-form"') and "more than 0 hours" in html


# --------------------------------------------------------------------------------------------
# SSH keys
# --------------------------------------------------------------------------------------------
def test_adding_a_key_lists_it_with_its_fingerprint(client_logged_in, user):
    response = client_logged_in.post("/keys/", {"name": "laptop", "public_key": VALID_KEY}, follow=True)
    html = response.content.decode()
    key = SSHKey.objects.get(user=user)
    assert key.fingerprint == keys.public_key_fingerprint(VALID_KEY)
    assert "laptop" in html and key.fingerprint in html


def test_a_key_without_a_name_takes_its_comment(client_logged_in, user):
    client_logged_in.post("/keys/", {"name": "", "public_key": VALID_KEY})
    assert SSHKey.objects.get(user=user).name == "me@laptop"


def test_a_duplicate_key_is_a_clear_error(client_logged_in, user):
    client_logged_in.post("/keys/", {"name": "laptop", "public_key": VALID_KEY})
    response = client_logged_in.post("/keys/", {"name": "again", "public_key": VALID_KEY + "-x"})
    assert response.status_code == 200
    assert "You already registered this key as “laptop”" in response.content.decode()
    assert SSHKey.objects.count() == 1


def test_the_same_key_may_belong_to_two_users(client, user, other_user):
    SSHKeyFactory(user=other_user, name="bob", public_key=VALID_KEY)
    client.force_login(user)
    client.post("/keys/", {"name": "laptop", "public_key": VALID_KEY})
    assert SSHKey.objects.filter(user=user).count() == 1


@pytest.mark.parametrize(
    "text,message",
    [
        ("not a key", "Unsupported SSH key type"),
        ("ssh-ed25519 AAAA!!", "not a valid SSH public key"),
        ("", "required"),
    ],
)
def test_an_invalid_key_is_explained(client_logged_in, text, message):
    response = client_logged_in.post("/keys/", {"name": "x", "public_key": text})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not SSHKey.objects.exists()


def test_the_keys_page_lists_only_my_keys(client_logged_in, user, other_user):
    SSHKeyFactory(user=user, name="mine", public_key=VALID_KEY)
    SSHKeyFactory(user=other_user, name="theirs", public_key=OTHER_KEY)
    html = client_logged_in.get("/keys/").content.decode()
    assert "mine" in html and "theirs" not in html


def test_deleting_my_key(client_logged_in, user):
    key = SSHKeyFactory(user=user, name="mine", public_key=VALID_KEY)
    response = client_logged_in.post(f"/keys/{key.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/keys/"
    assert not SSHKey.objects.exists()


def test_deleting_someone_elses_key_is_a_404(client_logged_in, other_user):
    key = SSHKeyFactory(user=other_user, name="theirs", public_key=VALID_KEY)
    assert client_logged_in.post(f"/keys/{key.pk}/delete/").status_code == 404
    assert client_logged_in.get(f"/keys/{key.pk}/delete/").status_code == 405
    assert SSHKey.objects.filter(pk=key.pk).exists()


def test_a_404_is_a_real_page_and_an_ended_session_pushes_away_its_extend_form(
    client_logged_in, user, other_user
):
    theirs = RentalFactory(consumer=other_user, reachable=True)
    response = client_logged_in.get(f"/sessions/{theirs.pk}/")
    assert response.status_code == 404 and "Browse offers" in response.content.decode()
    mine = RentalFactory(consumer=user, status=Status.STOPPING)
    html = client_logged_in.get(f"/sessions/{mine.pk}/").content.decode()
    assert f'id="rental-{mine.pk}-extend" hx-swap-oob="true" hidden' in html
    assert "Extend the reservation" not in html


# --------------------------------------------------------------------------------------------
# Failover settings on the rent page (sessions/failover.py)
# --------------------------------------------------------------------------------------------
def test_the_rent_page_offers_failover_on_by_default(client_logged_in, offer):
    html = client_logged_in.get(f"/offers/{offer.pk}/rent/").content.decode()
    assert 'name="failover" id="id_failover" checked' in html
    assert 'name="max_price_per_hour"' in html and "Empty: this price + 10 %." in html


def test_renting_with_failover_settings_stores_them(
    client_logged_in, offer, enqueued, django_capture_on_commit_callbacks
):
    post_rent(
        client_logged_in, offer, django_capture_on_commit_callbacks,
        failover="on", failover_any_gpu="on", max_price_per_hour="1.5",
    )  # fmt: skip
    rental = Rental.objects.get()
    assert (rental.failover, rental.failover_any_gpu, rental.max_price_per_hour) == (
        True,
        True,
        Decimal("1.5"),
    )


def test_a_ceiling_below_the_price_is_explained_and_rents_nothing(client_logged_in, offer, enqueued):
    payload = rent_form(client_logged_in, offer, failover="on", max_price_per_hour="1.0")
    response = client_logged_in.post(f"/offers/{offer.pk}/rent/", payload)
    assert response.status_code == 200
    assert (
        "The price ceiling must be at least the offer&#x27;s price ($1.2000/h)." in response.content.decode()
    )
    assert not Rental.objects.exists() and not enqueued
