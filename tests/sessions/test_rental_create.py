"""rental_create: validation, the offer re-check, the cap, and the two-phase commit (rule 1)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from inventory.models import Offer
from inventory.providers.base import Transient
from sessions import keys
from sessions.deployment import deployment_id, parse_label
from sessions.models import LABEL_PREFIX, Rental, RentalEvent, SSHKey, Status
from sessions.services import CapacityReached, OfferGone, PriceChanged, RentalError
from tests.fakes import public_of

from .conftest import START, fresh, new_public_key, transitions

pytestmark = pytest.mark.django_db

S = Status


def assert_nothing_rented(fake, *, provider_calls: list[str]):
    assert Rental.objects.count() == 0
    assert RentalEvent.objects.count() == 0
    assert fake.ops() == provider_calls
    assert fake.count("create") == 0
    assert fake.enqueued == []


# --- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("hours", [0, -1, "0", "-0.5", "abc", "", None, "nan", "inf", 1000, 13, "12.01"])
def test_it_rejects_bad_reservation_hours_before_asking_anyone(fake, offer, rent, hours):
    with pytest.raises(ValidationError) as err:
        rent(reservation_hours=hours)
    assert list(err.value.message_dict) == ["reservation_hours"]
    assert_nothing_rented(fake, provider_calls=[])


def test_it_names_the_hard_maximum_in_the_error(fake, offer, rent, settings):
    settings.SHOPPER_HARD_MAX_HOURS = 8
    with pytest.raises(ValidationError) as err:
        rent(reservation_hours=9)
    assert err.value.message_dict == {
        "reservation_hours": ["The reservation can be at most 8 hours (the hard maximum)."]
    }


@pytest.mark.parametrize("hours", ["0.25", 1, "12", Decimal("11.5")])
def test_it_accepts_reservations_up_to_the_hard_maximum(fake, offer, rent, hours):
    rental = rent(reservation_hours=hours).rental
    assert rental.reservation_ends_at == START + timedelta(hours=float(Decimal(str(hours))))
    assert rental.hard_max_at == START + timedelta(hours=12)


@pytest.mark.parametrize(
    "key",
    [
        "not a key",
        "ssh-ed25519 AAAA-not-base64",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
        new_public_key() + "\n" + new_public_key(),
    ],
)
def test_it_rejects_a_malformed_public_key(fake, offer, rent, key):
    with pytest.raises(ValidationError) as err:
        rent(ssh_public_key=key)
    assert list(err.value.message_dict) == ["ssh_public_key"]
    assert_nothing_rented(fake, provider_calls=[])


@pytest.mark.parametrize(("field", "kw"), [("disk_gb", {"disk_gb": 0}), ("image", {"image": "my image"})])
def test_it_rejects_bad_disk_and_image(fake, offer, rent, field, kw):
    with pytest.raises(ValidationError) as err:
        rent(**kw)
    assert list(err.value.message_dict) == [field]
    assert_nothing_rented(fake, provider_calls=[])


# --- the offer -------------------------------------------------------------------------------------
@pytest.mark.parametrize("offer_id", [999_999, "999999", "abc", "", "-1"])
def test_it_answers_404_for_an_unknown_offer(fake, offer, rent, offer_id):
    with pytest.raises(RentalError) as err:
        rent(offer_id=offer_id)
    # The class carries the answer (404 not_found); no status travels in data.
    assert (err.value.status, err.value.code, err.value.data) == (404, "not_found", {})
    assert err.value.message == "No offer with that id."
    assert_nothing_rented(fake, provider_calls=[])


def test_it_refuses_an_offer_already_marked_unavailable_without_asking_the_provider(fake, offer, rent):
    Offer.objects.filter(pk=offer.pk).update(available=False)
    with pytest.raises(OfferGone):
        rent()
    assert_nothing_rented(fake, provider_calls=[])


def test_it_refuses_an_offer_that_vanished_at_the_provider_and_marks_it_unavailable(fake, offer, rent):
    del fake.offers["fc-1"]
    with pytest.raises(OfferGone) as err:
        rent()
    assert (err.value.code, err.value.status) == ("offer_unavailable", 409)
    assert Offer.objects.get(pk=offer.pk).available is False
    assert_nothing_rented(fake, provider_calls=["get_offer"])
    assert fake.args("get_offer") == ["fc-1"]


def test_it_refuses_an_offer_of_a_disabled_provider(fake, offer, rent, settings):
    settings.FAKECLOUD_API_KEY = ""
    with pytest.raises(OfferGone, match="fakecloud is disabled"):
        rent()
    assert_nothing_rented(fake, provider_calls=[])


def test_it_refuses_when_the_provider_does_not_answer_the_recheck(fake, offer, rent):
    fake.fail["get_offer"] = [Transient("timed out")]
    with pytest.raises(RentalError, match=r"did not answer \(transient\)") as err:
        rent()
    assert type(err.value) is RentalError
    assert Offer.objects.get(pk=offer.pk).available is True  # no answer is not "gone"
    assert_nothing_rented(fake, provider_calls=["get_offer"])


def test_it_refuses_a_changed_price_and_updates_the_offer(fake, offer, rent):
    fake.add_offer("fc-1", "1.8000", gpu_count=2)
    with pytest.raises(PriceChanged) as err:
        rent()
    assert (err.value.code, err.value.status) == ("price_changed", 409)
    assert err.value.data == {"price_per_hour": "1.8000"}
    assert "$1.5000/h to $1.8000/h" in err.value.message
    row = Offer.objects.get(pk=offer.pk)
    assert (row.price_per_hour, row.price_per_gpu_hour) == (Decimal("1.8000"), Decimal("0.9000"))
    assert_nothing_rented(fake, provider_calls=["get_offer"])


def test_it_refuses_when_the_price_shown_to_the_user_is_not_the_current_one(fake, offer, rent):
    with pytest.raises(PriceChanged) as err:
        rent(expected_price=Decimal("1.2000"))
    assert err.value.data == {"price_per_hour": "1.5000"}
    assert Offer.objects.get(pk=offer.pk).price_per_hour == Decimal("1.5000")
    assert_nothing_rented(fake, provider_calls=["get_offer"])


def test_it_rents_at_the_new_price_when_the_user_was_shown_the_new_price(fake, offer, rent):
    fake.add_offer("fc-1", "1.8000", gpu_count=2)
    rental = rent(expected_price=Decimal("1.8000")).rental
    assert fresh(rental).price_per_hour == Decimal("1.8000")


# --- the cap ---------------------------------------------------------------------------------------
def test_it_refuses_beyond_the_live_rental_cap(fake, offer, rent, make_rental, other_user, settings):
    settings.SHOPPER_MAX_LIVE_RENTALS = 2
    make_rental(status=S.ACTIVE, consumer=other_user)  # the cap is team-wide
    make_rental(status=S.STOPPING)  # still running until destroyed: counts
    make_rental(status=S.DESTROYED)
    make_rental(status=S.FAILED)

    with pytest.raises(CapacityReached, match="limit of 2 live machines") as err:
        rent()

    assert (err.value.code, err.value.status) == ("capacity_reached", 409)
    assert Rental.objects.count() == 4
    assert RentalEvent.objects.count() == 0
    assert fake.count("create") == 0 and fake.enqueued == []


def test_ended_rentals_do_not_count_against_the_cap(fake, offer, rent, make_rental, settings):
    settings.SHOPPER_MAX_LIVE_RENTALS = 2
    make_rental(status=S.ACTIVE)
    make_rental(status=S.DESTROYED)
    make_rental(status=S.FAILED)
    assert rent().rental.status == S.PENDING
    assert Rental.objects.live().count() == 2


# --- success ---------------------------------------------------------------------------------------
def test_it_commits_a_pending_rental_with_a_snapshot_and_its_first_event(
    fake, offer, rent, user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        created = rent(reservation_hours="1.5", image="pytorch/pytorch:latest", disk_gb=80)
        # Rule 1: the row exists, nothing is enqueued and no create was sent before the commit.
        assert Rental.objects.filter(pk=created.rental.pk).exists()
        assert fake.enqueued == [] and fake.count("create") == 0

    assert len(callbacks) == 1
    rental = fresh(created.rental)
    assert fake.enqueued == [("sessions.tasks.provision", rental.pk)]
    assert fake.ops() == ["get_offer"]  # provisioning is the task's job, not the request's
    assert rental.status == S.PENDING
    assert rental.label == f"{LABEL_PREFIX}{deployment_id()}-{rental.pk}"
    assert (rental.consumer, rental.offer) == (user, offer)
    assert (rental.provider, rental.provider_offer_id) == ("fakecloud", "fc-1")
    assert (rental.gpu_type, rental.gpu_count, rental.vram_gb) == ("RTX 4090 24GB", 2, 24)
    assert (rental.location, rental.price_per_hour) == ("Oregon, US", Decimal("1.5000"))
    assert (rental.image, rental.disk_gb, rental.provider_instance_id) == ("pytorch/pytorch:latest", 80, "")
    assert rental.created_at == START
    assert rental.reservation_ends_at == START + timedelta(hours=1.5)
    assert rental.hard_max_at == START + timedelta(hours=12)
    assert rental.ended_at is None and rental.active_since is None

    [event] = RentalEvent.objects.filter(rental=rental)
    assert (event.kind, event.from_status, event.to_status, event.actor) == (
        "transition",
        "",
        S.PENDING,
        user,
    )
    assert event.reason == "Rented by alice for 1.5 h at $1.5000/h (pytorch/pytorch:latest, 80 GB disk)"
    assert event.data == {"offer_id": offer.pk, "reservation_hours": "1.5", "key": "generated"}


def test_the_price_snapshot_does_not_follow_later_menu_changes(fake, offer, rent):
    rental = rent().rental
    Offer.objects.filter(pk=offer.pk).update(price_per_hour=Decimal("9.9900"))
    assert fresh(rental).price_per_hour == Decimal("1.5000")


def test_it_generates_a_key_returned_once_and_stored_only_encrypted(fake, offer, rent):
    created = rent()
    pem = created.ssh_private_key
    assert pem.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")

    rental = fresh(created.rental)
    assert rental.has_generated_key
    body = "".join(pem.strip().splitlines()[1:-1])
    assert (
        body not in rental.ssh_private_key_encrypted and "PRIVATE KEY" not in rental.ssh_private_key_encrypted
    )
    assert keys.secret_decrypt(rental.ssh_private_key_encrypted) == pem
    assert rental.ssh_public_key == f"{public_of(pem)} shopper-generated"  # the pair's public half
    # Nowhere else in the database either (events are shown on the page).
    for field in Rental._meta.concrete_fields:
        assert body not in str(getattr(rental, field.attname))
    assert not any(body in str(e.data) + e.reason for e in RentalEvent.objects.all())


def test_it_installs_a_given_public_key_and_generates_nothing(fake, offer, rent):
    key = new_public_key()
    created = rent(ssh_public_key="  " + key.replace(" ", "   ") + "\n")
    rental = fresh(created.rental)
    assert created.ssh_private_key is None
    assert rental.ssh_public_key == key  # normalized to one line
    assert rental.ssh_private_key_encrypted == ""
    assert RentalEvent.objects.get(rental=rental).data["key"] == "given"


def test_it_installs_the_users_registered_keys_when_no_key_is_given(fake, offer, rent, user, other_user):
    mine = [new_public_key("work"), new_public_key("home")]
    for name, key in zip(["b-work", "a-home"], mine, strict=True):
        SSHKey.objects.create(
            user=user, name=name, public_key=key, fingerprint=keys.public_key_fingerprint(key)
        )
    theirs = new_public_key("bob")
    SSHKey.objects.create(
        user=other_user, name="bob", public_key=theirs, fingerprint=keys.public_key_fingerprint(theirs)
    )

    created = rent()

    rental = fresh(created.rental)
    assert created.ssh_private_key is None and rental.ssh_private_key_encrypted == ""
    assert rental.ssh_public_key.splitlines() == [mine[1], mine[0]]  # both of mine (by name), not bob's
    assert RentalEvent.objects.get(rental=rental).data["key"] == "given"


@pytest.mark.django_db(transaction=True)
def test_the_row_is_committed_before_the_provider_create_call(fake, offer, rent):
    """Rule 1 end to end: the provisioning task, run on commit, finds the committed row and
    never calls the provider from inside a database transaction."""
    seen = []

    def on_create(request):
        rental = Rental.objects.get(pk=parse_label(request.label).rental_id)
        seen.append((rental.status, connection.in_atomic_block))

    fake.hooks["create"] = on_create
    fake.run_tasks = "q"  # through django-q2 (Q_SYNC runs it inline)

    created = rent()

    rental = fresh(created.rental)
    assert seen == [(S.PROVISIONING, False)]
    assert fake.count("create") == 1
    assert rental.status == S.ACTIVE
    assert transitions(rental) == [
        ("", S.PENDING),
        (S.PENDING, S.PROVISIONING),
        (S.PROVISIONING, S.BOOTING),
        (S.BOOTING, S.VERIFYING),
        (S.VERIFYING, S.ACTIVE),
    ]


@pytest.mark.django_db(transaction=True)
def test_nothing_is_enqueued_when_the_creating_transaction_rolls_back(fake, offer, rent):
    from django.db import transaction

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        rent()
        raise Boom
    assert Rental.objects.count() == 0
    assert fake.enqueued == [] and fake.count("create") == 0
    assert timezone.now() == START
