"""``POST /api/v1/sessions`` with an ``Idempotency-Key`` (API.md): a repeat returns the first
request's rental, never a second one; the same key with another body is refused."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from sessions import services
from sessions.models import EventKind, Rental, RentalEvent, Status

pytestmark = pytest.mark.django_db

VALID_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq7vQ7N4fK8m0s6p7D0J8u1g9xk8aZq6JQnq1m6tq1a me@laptop"


@pytest.fixture(autouse=True)
def provider(fake_cloud, enqueued):
    cloud = fake_cloud("idemcloud", "Idem Cloud")
    cloud.add_offer("o-1", "1.2000", gpu_count=2)
    cloud.add_offer("o-2", "0.8000", gpu_count=1)
    return cloud


@pytest.fixture
def offer(make_offer):
    return make_offer(provider="idemcloud", provider_offer_id="o-1", gpu_count=2, price_per_hour="1.2000")


def rent(client, offer, captured, key=None, **body):
    payload = {"offer_id": str(offer.pk), "reservation_hours": 2, **body}
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    with captured(execute=True):
        return client.post("/api/v1/sessions", payload, format="json", **headers)


def test_a_repeat_returns_the_first_rental_with_the_same_body(
    api_client, offer, enqueued, django_capture_on_commit_callbacks
):
    first = rent(api_client, offer, django_capture_on_commit_callbacks, key="k-1", generate_key=True)
    assert first.status_code == 201, first.json()
    cache.clear()  # the repeat may reach another web process: no process memory is involved
    second = rent(api_client, offer, django_capture_on_commit_callbacks, key="k-1", generate_key=True)
    assert second.status_code == 200, second.json()
    assert second.json() == first.json()
    assert second.json()["ssh_private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    rental = Rental.objects.get()
    assert rental.request_key == "k-1"
    assert len(enqueued) == 1  # one provisioning, one machine
    # Handing the private key out again is on the timeline, like a download.
    assert RentalEvent.objects.filter(rental=rental, kind=EventKind.KEY_DOWNLOAD).count() == 1


def test_without_a_key_two_requests_are_two_rentals(api_client, offer, django_capture_on_commit_callbacks):
    assert rent(api_client, offer, django_capture_on_commit_callbacks).status_code == 201
    assert rent(api_client, offer, django_capture_on_commit_callbacks).status_code == 201
    assert Rental.objects.count() == 2


def test_the_same_key_with_another_body_is_a_422_and_changes_nothing(
    api_client, offer, make_offer, django_capture_on_commit_callbacks
):
    first = rent(api_client, offer, django_capture_on_commit_callbacks, key="k-2", ssh_public_key=VALID_KEY)
    assert first.status_code == 201
    other = make_offer(provider="idemcloud", provider_offer_id="o-2", price_per_hour="0.8000")
    for repeat in (
        {"offer": offer, "reservation_hours": 3, "ssh_public_key": VALID_KEY},
        {"offer": other, "ssh_public_key": VALID_KEY},
        {"offer": offer, "generate_key": True},
    ):
        target = repeat.pop("offer")
        response = rent(api_client, target, django_capture_on_commit_callbacks, key="k-2", **repeat)
        assert response.status_code == 422, response.json()
        assert response.json()["code"] == "idempotency_key_reused"
    assert Rental.objects.count() == 1


def test_keys_are_per_user(api_client, other_user, offer, django_capture_on_commit_callbacks):
    mine = rent(api_client, offer, django_capture_on_commit_callbacks, key="shared", ssh_public_key=VALID_KEY)
    bob = APIClient()
    bob.force_authenticate(other_user)
    theirs = rent(bob, offer, django_capture_on_commit_callbacks, key="shared", ssh_public_key=VALID_KEY)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]
    assert Rental.objects.filter(request_key="shared").count() == 2


def test_a_refused_request_stores_nothing_and_its_repeat_tries_again(
    api_client, offer, provider, django_capture_on_commit_callbacks
):
    provider.add_offer("o-1", "1.5000", gpu_count=2)
    refused = rent(
        api_client, offer, django_capture_on_commit_callbacks, key="k-3", expected_price_per_hour="1.2"
    )
    assert refused.status_code == 409 and refused.json()["code"] == "price_changed"
    assert not Rental.objects.exists()
    # Nothing was stored: the same key, with the new price, rents now.
    again = rent(
        api_client, offer, django_capture_on_commit_callbacks, key="k-3", expected_price_per_hour="1.5"
    )
    assert again.status_code == 201, again.json()


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_bad_key_is_a_400_naming_the_header_and_rents_nothing(
    api_client, offer, key, django_capture_on_commit_callbacks
):
    response = rent(api_client, offer, django_capture_on_commit_callbacks, key=key)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]
    assert not Rental.objects.exists()


def test_a_repeat_after_the_rental_ended_returns_it_without_the_deleted_key(
    api_client, offer, django_capture_on_commit_callbacks
):
    first = rent(api_client, offer, django_capture_on_commit_callbacks, key="k-4", generate_key=True)
    rental = Rental.objects.get(pk=first.json()["id"])
    assert services.rental_transition(rental, Status.FAILED, reason="test: it ended")
    second = rent(api_client, offer, django_capture_on_commit_callbacks, key="k-4", generate_key=True)
    assert second.status_code == 200
    assert second.json()["id"] == str(rental.pk) and second.json()["status"] == "failed"
    assert "ssh_private_key" not in second.json()  # not live: no more than /ssh-key would give
    assert Rental.objects.count() == 1


def test_the_schema_documents_the_header(api_client):
    schema = api_client.get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    create = schema["paths"]["/api/v1/sessions"]["post"]
    header = next(p for p in create["parameters"] if p["name"] == "Idempotency-Key")
    assert header["in"] == "header" and not header.get("required", False)
    assert {"200", "201", "422"} <= set(create["responses"])
