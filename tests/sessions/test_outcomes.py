"""Issue 15: every provisioning outcome is recorded, through the real provisioning path against
the fake cloud (tests/fakes.py): success and each failure kind, with provider, offer, host,
location and GPU model; one row per attempt; the hiding policy applied on the way."""

from __future__ import annotations

import pytest

from inventory.models import Offer, ProvisionOutcome
from inventory.providers.base import STATE_FAILED, STATE_STOPPED, OfferUnavailable, PermanentError
from sessions.models import Status
from sessions.provisioning import rental_provision

from .conftest import fresh

pytestmark = pytest.mark.django_db
S = Status


@pytest.fixture
def rented(rent, offer, make_offer):
    """A pending rental of ``offer``, which is on host node-1 beside a sibling offer."""
    Offer.objects.filter(pk=offer.pk).update(host="node-1")
    make_offer(provider="fakecloud", provider_offer_id="fc-sibling", host="node-1")
    return rent().rental


def outcomes() -> list[tuple]:
    return list(
        ProvisionOutcome.objects.values_list(
            "rental_id", "provider", "provider_offer_id", "host", "location", "gpu_type", "kind"
        )
    )


def visible(*offer_ids: str) -> list[bool]:
    return [Offer.objects.visible().filter(provider_offer_id=o).exists() for o in offer_ids]


def test_a_rental_that_becomes_active_is_a_success_with_where_it_ran(fake, rented):
    rental_provision(rental_id=rented.pk, waits=fake.waits)
    assert fresh(rented).status == S.ACTIVE
    where = ("fakecloud", "fc-1", "node-1", "Oregon, US", "RTX 4090 24GB")
    assert outcomes() == [(rented.pk, *where, "success")]


def _stops_after_it_ran(fake):
    def stop_it(instance_id):
        inst = fake.instances[instance_id]
        if inst.ssh_port:  # it ran once
            inst.state = STATE_STOPPED

    fake.hooks["get"] = stop_it
    fake.ssh_down = True


def _cuda_lie(fake):
    Offer.objects.filter(provider_offer_id="fc-1").update(cuda_version="12.9")
    fake.gpu = {"cuda": "12.8", "driver": "570.124.04"}


SCRIPTS = {
    # FIELD_NOTES VA-NOSUCHASK / TD-STALE-NONODES
    "offer_gone": lambda fake: fake.fail["create"].append(OfferUnavailable("no_such_ask")),
    # TD-NOPUBLICIP
    "no_ip": lambda fake: fake.fail["create"].append(OfferUnavailable("No available public IPs on hostnode")),
    # TD-NODRIVER: the driver never works
    "no_gpu": lambda fake: setattr(fake, "gpu_broken_checks", 10_000),
    # not the GPUs that were sold
    "no_gpu/wrong": lambda fake: setattr(fake, "gpu", {"count": 1}),
    # VA-CUDA-LIE
    "cuda_low": _cuda_lie,
    # VA-SSH: never logs in
    "ssh_never_up": lambda fake: setattr(fake, "ssh_down", True),
    # VA-LOADING: never runs within the boot timeout
    "ssh_never_up/boot": lambda fake: setattr(fake, "boot_polls", 10**6),
    # TD-STOPS / VA-DIES: stops right after starting
    "died_early": _stops_after_it_ran,
    # failed while booting
    "died_early/boot": lambda fake: setattr(fake, "boot_to", STATE_FAILED),
    # anything else the provider says
    "other": lambda fake: fake.fail["create"].append(PermanentError("invalid_args: bad image")),
}


@pytest.mark.parametrize("case", list(SCRIPTS))
def test_each_failure_kind_is_recorded_once_with_where_it_failed(fake, rented, settings, case):
    settings.SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS = 60
    settings.SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS = 60
    settings.SHOPPER_BOOT_TIMEOUT_SECONDS = 60
    SCRIPTS[case](fake)
    rental_provision(rental_id=rented.pk, waits=fake.waits)
    assert fresh(rented).status in (S.FAILED, S.STOPPING)
    kind = case.split("/")[0]
    # One row: the specific reason, not also the generic failure path's "other".
    assert outcomes() == [(rented.pk, "fakecloud", "fc-1", "node-1", "Oregon, US", "RTX 4090 24GB", kind)]


@pytest.mark.parametrize(
    ("case", "hidden"),
    [
        ("no_ip", [False, False]),  # the host has no IPs: every offer on it
        ("no_gpu", [False, False]),  # the machine's driver is broken
        ("cuda_low", [False, False]),  # the machine's CUDA is older
        ("ssh_never_up", [True, True]),  # weak: once is not enough
    ],
)
def test_strong_evidence_hides_the_host_at_once(fake, rented, settings, case, hidden):
    settings.SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS = 60
    settings.SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS = 60
    SCRIPTS[case](fake)
    rental_provision(rental_id=rented.pk, waits=fake.waits)
    assert visible("fc-1", "fc-sibling") == hidden


def test_a_success_on_the_host_clears_its_hiding(fake, rented, rent):
    later = rent().rental  # rented before the failure hid the offer
    SCRIPTS["no_ip"](fake)
    rental_provision(rental_id=rented.pk, waits=fake.waits)
    assert visible("fc-1", "fc-sibling") == [False, False]
    rental_provision(rental_id=later.pk, waits=fake.waits)
    assert fresh(later).status == S.ACTIVE
    assert visible("fc-sibling") == [True]
    # fc-1 stays withdrawn (the create said it is gone) until a refresh lists it again, unhidden.
    assert Offer.objects.get(provider_offer_id="fc-1").hidden_until is None
