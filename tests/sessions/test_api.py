"""The sessions REST contract of API.md, with the provider faked at the registry seam."""

from __future__ import annotations

from decimal import Decimal

import pytest

from sessions import services
from sessions.models import Rental, RentalEvent, Status
from tests.factories import RentalFactory, SSHKeyFactory

pytestmark = pytest.mark.django_db

VALID_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq7vQ7N4fK8m0s6p7D0J8u1g9xk8aZq6JQnq1m6tq1a me@laptop"


@pytest.fixture(autouse=True)
def provider(fake_cloud, enqueued):
    """The fake provider of this module's offer: o-1, 2 × RTX 4090 24GB at $1.20/h."""
    cloud = fake_cloud("apicloud", "API Cloud")
    cloud.add_offer("o-1", "1.2000", gpu_count=2)
    return cloud


@pytest.fixture
def offer(make_offer):
    return make_offer(provider="apicloud", provider_offer_id="o-1", gpu_count=2, price_per_hour="1.2000")


def rent(api_client, offer, django_capture_on_commit_callbacks, **body):
    payload = {"offer_id": str(offer.pk), "reservation_hours": 2, **body}
    with django_capture_on_commit_callbacks(execute=True):
        return api_client.post("/api/v1/sessions", payload, format="json")


def test_it_rents_with_a_generated_key_shown_once(
    api_client, offer, enqueued, django_capture_on_commit_callbacks
):
    response = rent(api_client, offer, django_capture_on_commit_callbacks)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "pending" and body["consumer"] == "alice"
    assert body["price_per_hour"] == "1.2000" and body["gpu_count"] == 2
    assert body["offer_id"] == str(offer.pk)
    assert body["ssh"] is None and body["cost_so_far"] == "0.00"
    assert body["ssh_private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    rental = Rental.objects.get(pk=body["id"])
    assert body["ssh_private_key"] not in rental.ssh_private_key_encrypted  # encrypted at rest
    assert enqueued == [("sessions.tasks.provision", rental.pk)]
    again = api_client.get(f"/api/v1/sessions/{rental.pk}").json()
    assert "ssh_private_key" not in again


def test_it_uses_a_given_public_key(api_client, offer, django_capture_on_commit_callbacks):
    response = rent(api_client, offer, django_capture_on_commit_callbacks, ssh_public_key=VALID_KEY)
    assert response.status_code == 201
    assert "ssh_private_key" not in response.json()
    assert Rental.objects.get().ssh_public_key == VALID_KEY


@pytest.mark.parametrize(
    "body,field",
    [
        ({"reservation_hours": 0}, "reservation_hours"),
        ({"reservation_hours": 1000}, "reservation_hours"),
        ({"reservation_hours": "soon"}, "reservation_hours"),
        ({"reservation_hours": None}, "reservation_hours"),
        ({"ssh_public_key": "ssh-rsa not-base64!"}, "ssh_public_key"),
        ({"ssh_public_key": "hello world"}, "ssh_public_key"),
        ({"disk_gb": 0}, "disk_gb"),
        ({"offer_id": ""}, "offer_id"),
    ],
)
def test_bad_input_is_a_400_that_names_the_field_and_creates_nothing(
    api_client, offer, enqueued, body, field
):
    payload = {"offer_id": str(offer.pk), "reservation_hours": 2, **body}
    response = api_client.post("/api/v1/sessions", payload, format="json")
    assert response.status_code == 400, response.json()
    assert field in response.json()["detail"]
    assert response.json()["code"] == "invalid"
    assert not Rental.objects.exists() and not enqueued


def test_an_unknown_offer_is_a_404(api_client, offer):
    response = api_client.post(
        "/api/v1/sessions", {"offer_id": "987654", "reservation_hours": 1}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_a_vanished_offer_is_a_409_offer_unavailable(api_client, offer, provider):
    del provider.offers["o-1"]
    response = api_client.post(
        "/api/v1/sessions", {"offer_id": offer.pk, "reservation_hours": 1}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["code"] == "offer_unavailable"
    offer.refresh_from_db()
    assert offer.available is False and not Rental.objects.exists()


def test_a_changed_price_is_a_409_and_the_menu_learns_the_new_price(api_client, offer, provider):
    provider.add_offer("o-1", "1.5000", gpu_count=2)
    response = api_client.post(
        "/api/v1/sessions", {"offer_id": offer.pk, "reservation_hours": 1}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["code"] == "price_changed"
    assert "1.5000" in response.json()["detail"]
    offer.refresh_from_db()
    assert offer.price_per_hour == Decimal("1.5000") and not Rental.objects.exists()


def test_the_live_instance_cap_is_a_409(api_client, offer, settings, django_capture_on_commit_callbacks):
    settings.SHOPPER_MAX_LIVE_RENTALS = 1
    assert rent(api_client, offer, django_capture_on_commit_callbacks).status_code == 201
    response = rent(api_client, offer, django_capture_on_commit_callbacks)
    assert response.status_code == 409 and response.json()["code"] == "capacity_reached"
    assert Rental.objects.count() == 1


def test_a_user_sees_only_their_own_sessions(api_client, user, other_user):
    mine = RentalFactory(consumer=user)
    theirs = RentalFactory(consumer=other_user)
    listed = [r["id"] for r in api_client.get("/api/v1/sessions").json()["results"]]
    assert listed == [str(mine.pk)]
    for path in ("", "/events", "/ssh-key"):
        assert api_client.get(f"/api/v1/sessions/{theirs.pk}{path}").status_code == 404
    assert api_client.post(f"/api/v1/sessions/{theirs.pk}/done").status_code == 404
    assert api_client.delete(f"/api/v1/sessions/{theirs.pk}").status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == Status.ACTIVE
    assert api_client.get("/api/v1/sessions", {"consumer": "bob"}).json()["count"] == 0


def test_staff_see_everyone_and_filter(staff, user, other_user):
    from rest_framework.test import APIClient

    RentalFactory(consumer=user)
    RentalFactory(consumer=other_user, status=Status.DESTROYED)
    c = APIClient()
    c.force_authenticate(staff)
    assert c.get("/api/v1/sessions").json()["count"] == 2
    assert c.get("/api/v1/sessions", {"consumer": "bob"}).json()["results"][0]["consumer"] == "bob"
    assert c.get("/api/v1/sessions", {"status": "active"}).json()["count"] == 1
    assert c.get("/api/v1/sessions", {"status": "sleeping"}).status_code == 400


def test_an_invalid_session_id_is_a_404(api_client):
    assert api_client.get("/api/v1/sessions/not-a-uuid").status_code == 404
    assert api_client.get("/api/v1/sessions/00000000-0000-0000-0000-000000000000").status_code == 404


def test_done_moves_to_stopping_and_enqueues_teardown_and_done_twice_is_fine(
    api_client, user, enqueued, django_capture_on_commit_callbacks
):
    rental = RentalFactory(consumer=user, active_since=None)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(f"/api/v1/sessions/{rental.pk}/done")
    assert response.status_code == 202 and response.json()["status"] == "stopping"
    assert enqueued == [("sessions.tasks.teardown", rental.pk)]
    assert api_client.post(f"/api/v1/sessions/{rental.pk}/done").status_code == 202
    assert RentalEvent.objects.filter(rental=rental, to_status="stopping").count() == 1


def test_done_after_the_end_is_a_409_and_delete_is_a_harmless_202(api_client, user):
    rental = RentalFactory(consumer=user, status=Status.DESTROYED)
    response = api_client.post(f"/api/v1/sessions/{rental.pk}/done")
    assert response.status_code == 409 and response.json()["code"] == "already_ended"
    response = api_client.delete(f"/api/v1/sessions/{rental.pk}")
    assert response.status_code == 202 and response.json()["status"] == "destroyed"


def test_the_key_download_is_owner_only_audited_and_gone_after_teardown(api_client, user, staff):
    from rest_framework.test import APIClient

    from sessions.keys import keypair_generate

    public, private = keypair_generate("t")
    rental = RentalFactory(consumer=user, ssh_public_key=public, private_key=private)
    response = api_client.get(f"/api/v1/sessions/{rental.pk}/ssh-key")
    assert response.status_code == 200 and response.content.decode() == private
    assert rental.events.filter(kind="key_download", actor=user).count() == 1
    c = APIClient()
    c.force_authenticate(staff)
    assert c.get(f"/api/v1/sessions/{rental.pk}/ssh-key").status_code == 404  # owner only
    Rental.objects.filter(pk=rental.pk).update(status=Status.DESTROYED, ssh_private_key_encrypted="")
    assert api_client.get(f"/api/v1/sessions/{rental.pk}/ssh-key").status_code == 410


def test_events_are_the_timeline(api_client, user):
    rental = RentalFactory(consumer=user, status=Status.PENDING)
    services.rental_transition(rental, Status.PROVISIONING, reason="Creating")
    events = api_client.get(f"/api/v1/sessions/{rental.pk}/events").json()
    assert [(e["from_status"], e["to_status"], e["reason"]) for e in events] == [
        ("pending", "provisioning", "Creating")
    ]


def test_an_active_session_shows_the_ssh_handoff(api_client, user):
    rental = RentalFactory(consumer=user, ssh_host="203.0.113.5", ssh_port=41201, ssh_user="root")
    body = api_client.get(f"/api/v1/sessions/{rental.pk}").json()
    assert body["ssh"] == {"host": "203.0.113.5", "port": 41201, "user": "root",
                           "command": "ssh -p 41201 root@203.0.113.5"}  # fmt: skip


def test_a_revoked_or_expired_token_is_refused(user):
    from datetime import timedelta

    from django.utils import timezone
    from rest_framework.test import APIClient

    from shopper.models import ApiToken

    _, raw = ApiToken.issue(user=user, name="old", expires_at=timezone.now() - timedelta(seconds=1))
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    assert c.get("/api/v1/sessions").status_code == 401
    c.credentials(HTTP_AUTHORIZATION="Token nope")
    assert c.get("/api/v1/sessions").status_code == 401


def test_a_generated_pair_can_be_asked_for_even_with_registered_keys(
    api_client, user, offer, django_capture_on_commit_callbacks
):
    SSHKeyFactory(user=user, public_key=VALID_KEY)
    response = rent(api_client, offer, django_capture_on_commit_callbacks, generate_key=True)
    assert response.status_code == 201
    assert response.json()["ssh_private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert VALID_KEY not in Rental.objects.get().ssh_public_key
    both = rent(
        api_client, offer, django_capture_on_commit_callbacks, generate_key=True, ssh_public_key=VALID_KEY
    )
    assert both.status_code == 400 and "ssh_public_key" in both.json()["detail"]


def test_the_safety_page_and_the_admin_override_are_staff_only(client, user, staff):
    from sessions.models import Alert, AlertKind

    rental = RentalFactory(consumer=user)
    Alert.objects.create(
        kind=AlertKind.ORPHAN, provider="apicloud", provider_instance_id="9", message="orphan 9"
    )
    client.force_login(user)
    assert client.get("/safety/").status_code == 404
    staff.is_superuser = True  # the Django admin also needs model permissions
    staff.save()
    client.force_login(staff)
    html = client.get("/safety/").content.decode()
    assert "orphan 9" in html and rental.gpu_type in html
    response = client.post(
        "/admin/rentals/rental/",
        {
            "action": "extend_past_hard_max",
            "_selected_action": [str(rental.pk)],
            "apply": "1",
            "hours": "20",
            "reason": "long training run",
        },
    )
    assert response.status_code == 302
    rental.refresh_from_db()
    event = rental.events.get(kind="override")
    assert event.actor == staff and event.data["reason"] == "long training run"
    assert rental.hard_max_at == rental.reservation_ends_at


def test_the_kill_switch_needs_the_phrase_and_then_stops_every_live_rental(client, user, other_user, staff):
    live = [RentalFactory(consumer=user), RentalFactory(consumer=other_user, status=Status.BOOTING)]
    ended = RentalFactory(consumer=user, status=Status.DESTROYED)
    client.force_login(user)
    assert client.post("/safety/kill-switch/", {"confirm": "STOP ALL"}).status_code == 404
    client.force_login(staff)
    client.post("/safety/kill-switch/", {"confirm": "stop"})
    assert {r.status for r in Rental.objects.filter(pk__in=[r.pk for r in live])} == {
        Status.ACTIVE,
        Status.BOOTING,
    }
    response = client.post("/safety/kill-switch/", {"confirm": "STOP ALL"})
    assert response.status_code == 302
    assert set(Rental.objects.filter(pk__in=[r.pk for r in live]).values_list("status", flat=True)) == {
        "stopping"
    }
    ended.refresh_from_db()
    assert ended.status == Status.DESTROYED
    event = RentalEvent.objects.filter(rental=live[0], to_status="stopping").get()
    assert event.actor == staff and "Kill switch" in event.reason
