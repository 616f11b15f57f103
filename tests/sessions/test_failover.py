"""Failover (issue 15, sessions/failover.py): a rental whose provisioning fails for a reason about
the offer rents the best comparable offer by itself; same rental, one timeline, never two live
instances; the price ceiling, the tries, the budget and the capacity cap hold."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import OperationalError, connection
from django.urls import reverse

from costs.models import Budget
from costs.services import BudgetExceeded, budget_status
from inventory.models import Offer
from inventory.providers.base import STATE_FAILED, STATE_RUNNING, OfferUnavailable, PermanentError
from sessions import failover
from sessions.models import EventKind, Rental, RentalEvent, Status
from sessions.provisioning import rental_provision
from sessions.services import CapacityReached, RentalCreated, rental_create, rental_stop
from tests.fakes import FakeCloud

from .conftest import events, fresh, transitions

pytestmark = pytest.mark.django_db

S = Status
GPU = "RTX 4090 24GB"


@pytest.fixture
def second(fake, make_offer):
    """A comparable offer (same GPU model and count) at $1.6000/h, within the default ceiling
    ($1.5000 + 10 % = $1.6500)."""
    fake.add_offer("fc-2", "1.6000", gpu_count=2)
    return make_offer(
        provider="fakecloud", provider_offer_id="fc-2", price_per_hour="1.6000", gpu_count=2, gpu_type=GPU
    )


def live_instances(fake) -> list:
    return [i for i in fake.instances.values() if i.deleting_polls is None]


def provision(rental: Rental) -> Rental:
    rental_provision(rental_id=rental.pk, waits=FakeCloud.cloud.waits)
    return fresh(rental)


def fault(fake, settings, reason: str) -> None:
    """Make the first offer's attempt fail for ``reason``; the next create finds a healthy cloud."""
    settings.SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS = 120

    def heal() -> None:
        fake.ssh_down, fake.gpu, fake.gpu_broken_checks, fake.boot_to = False, {}, 0, STATE_RUNNING

    if reason == failover.OFFER_GONE:
        fake.fail["create"] = [OfferUnavailable("no_such_ask", status=400)]
    elif reason == failover.NO_NODES:
        fake.fail["create"] = [OfferUnavailable("No available nodes found", status=200)]
    elif reason == failover.NO_PUBLIC_IP:
        fake.fail["create"] = [OfferUnavailable("No available public IPs on hostnode", status=400)]
    else:
        if reason == failover.SSH_NEVER_UP:
            fake.ssh_down = True
        elif reason == failover.GPU_BROKEN:
            fake.gpu_broken_checks = 10_000
        elif reason == failover.CUDA_TOO_LOW:
            Offer.objects.filter(provider_offer_id="fc-1").update(cuda_version="12.8")
            fake.gpu = {"cuda": "11.8"}
        elif reason == failover.GPU_MISMATCH:
            fake.gpu = {"count": 1}
        elif reason == failover.MACHINE_DIED:
            fake.boot_to = STATE_FAILED
        creates = []
        fake.hooks["create"] = lambda request: creates.append(request) or (len(creates) > 1 and heal())


def never_two_live(fake) -> list[int]:
    """Record, at every create, how many instances are live at the provider (must be 0)."""
    seen: list[int] = []
    previous = fake.hooks.get("create")

    def check(request):
        seen.append(len(live_instances(fake)))
        if previous:
            previous(request)

    fake.hooks["create"] = check
    return seen


@pytest.mark.parametrize("reason", sorted(failover.REASONS))
def test_each_offer_failure_rents_the_next_comparable_offer(fake, rent, offer, second, settings, reason):
    fault(fake, settings, reason)
    seen = never_two_live(fake)
    rental = provision(rent().rental)

    assert rental.status == S.ACTIVE, rental.status_detail
    assert (rental.offer_id, rental.provider_offer_id, rental.price_per_hour) == (
        second.pk, "fc-2", Decimal("1.6000"),
    )  # fmt: skip
    assert seen == [0, 0]  # the failed instance was gone before the second create
    assert fake.count("create") == 2 and len(live_instances(fake)) == 1
    [move] = [e for e in events(rental, EventKind.TRANSITION) if e.data.get("failover")]
    assert move.to_status == S.PENDING
    assert move.data["attempt"] == 1 and move.data["reason"] == reason
    assert move.data["offer"]["id"] == second.pk and move.data["from_offer"]["id"] == offer.pk
    assert move.reason.startswith(f"Failover 1/3: {failover.REASONS[reason]}")
    # One rental, one timeline: pending → ... → (stopping →) pending → ... → active.
    assert transitions(rental)[0] == ("", S.PENDING) and transitions(rental)[-1] == (S.VERIFYING, S.ACTIVE)
    assert Rental.objects.count() == 1


def test_without_a_comparable_offer_a_refused_create_fails_with_the_ceiling(fake, rent, make_offer):
    make_offer(
        provider="fakecloud", provider_offer_id="fc-9", price_per_hour="1.7000", gpu_count=2, gpu_type=GPU
    )
    fake.add_offer("fc-9", "1.7000", gpu_count=2)  # above the $1.6500 ceiling
    fake.fail["create"] = [OfferUnavailable("no_such_ask", status=400)]
    rental = provision(rent().rental)

    assert rental.status == S.FAILED
    assert (
        rental.status_detail
        == "Could not create the instance: no_such_ask; no comparable offer under $1.6500/h"
    )
    assert fake.count("create") == 1
    [warning] = [e for e in events(rental, EventKind.WARNING) if e.data.get("failover_none")]
    assert "no comparable offer under $1.6500/h" in warning.reason


def test_without_a_comparable_offer_a_failed_machine_is_torn_down_as_before(fake, rent, settings):
    fake.ssh_down = True
    rental = provision(rent().rental)

    assert rental.status == S.STOPPING and not rental.failover_pending
    assert rental.status_detail.startswith("Could not log in over SSH within the timeout")
    [warning] = [e for e in events(rental, EventKind.WARNING) if e.data.get("failover_none")]
    assert warning.reason.startswith("Failover: no comparable offer under $1.6500/h")


def test_an_offer_gone_at_the_recheck_ends_the_rental_after_the_teardown(fake, rent, second):
    fake.ssh_down = True
    fake.hooks["destroy"] = lambda _id: fake.offers.pop("fc-2", None)  # gone by the time we ask
    rental = provision(rent().rental)

    assert rental.status == S.DESTROYED
    assert rental.status_detail.endswith("; no comparable offer under $1.6500/h")
    assert fake.count("create") == 1 and live_instances(fake) == []


def test_a_higher_ceiling_reaches_a_dearer_offer(fake, rent, make_offer):
    make_offer(
        provider="fakecloud", provider_offer_id="fc-9", price_per_hour="1.7000", gpu_count=2, gpu_type=GPU
    )
    fake.add_offer("fc-9", "1.7000", gpu_count=2)
    fake.fail["create"] = [OfferUnavailable("no_such_ask", status=400)]
    rental = provision(rent(max_price_per_hour="1.80").rental)

    assert rental.status == S.ACTIVE and rental.provider_offer_id == "fc-9"
    assert rental.max_price_per_hour == Decimal("1.8000")


def test_failover_off_fails_as_before(fake, rent, second):
    fake.fail["create"] = [OfferUnavailable("no_such_ask", status=400)]
    rental = provision(rent(failover=False).rental)

    assert rental.status == S.FAILED and rental.status_detail == "Could not create the instance: no_such_ask"
    assert fake.count("create") == 1


def test_a_failure_that_is_not_about_the_offer_does_not_fail_over(fake, rent, second):
    fake.fail["create"] = [PermanentError("invalid_args: bad image", status=400)]
    rental = provision(rent().rental)

    assert rental.status == S.FAILED and fake.count("create") == 1
    assert not [e for e in events(rental, EventKind.WARNING) if e.data.get("failover_none")]


def test_at_most_the_configured_tries(fake, rent, make_offer, settings):
    settings.SHOPPER_FAILOVER_TRIES = 2
    for n in (2, 3, 4):
        fake.add_offer(f"fc-{n}", "1.5000", gpu_count=2)
        make_offer(
            provider="fakecloud",
            provider_offer_id=f"fc-{n}",
            price_per_hour="1.5000",
            gpu_count=2,
            gpu_type=GPU,
        )
    fake.fail["create"] = [OfferUnavailable("no_such_ask", status=400) for _ in range(4)]
    rental = provision(rent().rental)

    assert rental.status == S.FAILED
    assert fake.count("create") == 3  # the first offer and two failovers
    assert failover.attempts(rental) == 2
    assert rental.status_detail.endswith("no comparable offer under $1.6500/h")
    assert [e.data["attempt"] for e in events(rental, EventKind.TRANSITION) if e.data.get("failover")] == [
        1,
        2,
    ]


def test_the_budget_reservation_follows_the_new_price(fake, rent, second, user):
    Budget.objects.create(user=user, monthly_limit=Decimal("100"))
    fake.fail["create"] = [OfferUnavailable("no_such_ask", status=400)]
    rental = provision(rent().rental)

    assert rental.status == S.ACTIVE and rental.price_per_hour == Decimal("1.6000")
    # 2 h reserved at the new price (frozen clock: the whole reservation is left).
    assert Decimal(budget_status(user=user)["user"]["reserved"]) == Decimal("3.20")


def test_a_failover_the_budget_cannot_pay_for_ends_the_rental(fake, rent, second, user):
    # $3.00 reserved at $1.5000/h for 2 h; the move to $1.6000/h needs $0.20 more than is left.
    Budget.objects.create(user=user, monthly_limit=Decimal("3.10"))
    fake.fail["create"] = [OfferUnavailable("no_such_ask", status=400)]
    rental = provision(rent().rental)

    assert rental.status == S.FAILED and rental.price_per_hour == Decimal("1.5000")
    assert rental.status_detail.endswith("no comparable offer under $1.6500/h")
    [refused] = [e for e in events(rental, EventKind.WARNING) if "refused" in e.reason]
    assert "Budget exceeded" in refused.reason and fake.count("create") == 1


def test_the_capacity_cap_holds_across_a_failover(fake, rent, second, settings, make_offer, user):
    settings.SHOPPER_MAX_LIVE_RENTALS = 1
    fake.ssh_down = True
    refused = []

    def another_rent(_id):  # while the failed machine is torn down, the rental still counts
        fake.ssh_down = False
        try:
            rental_create(user=user, offer_id=second.pk, reservation_hours=1)
        except CapacityReached as exc:
            refused.append(exc.message)

    fake.hooks["destroy"] = another_rent
    rental = provision(rent().rental)

    assert rental.status == S.ACTIVE and rental.provider_offer_id == "fc-2"
    assert len(refused) == 1 and Rental.objects.live().count() == 1


def test_a_stop_during_the_teardown_cancels_the_failover(fake, rent, second, user):
    fake.ssh_down = True
    fake.hooks["destroy"] = lambda _id: rental_stop(
        rental=Rental.objects.get(pk=created.rental.pk), reason="Done", actor=user
    )
    created = rent()
    rental = provision(created.rental)

    assert rental.status == S.DESTROYED and fake.count("create") == 1
    assert failover.attempts(rental) == 0
    assert RentalEvent.objects.filter(rental=rental, reason="Failover cancelled: Done").exists()


def test_a_stop_after_the_failover_moved_on_stops_the_new_attempt(fake, make_rental):
    rental = make_rental(status=S.STOPPING, failover_pending=failover.SSH_NEVER_UP)
    stale = Rental.objects.get(pk=rental.pk)
    Rental.objects.filter(pk=rental.pk).update(status=S.PENDING, failover_pending="")  # the teardown won

    assert rental_stop(rental=stale, reason="Done") is True
    assert fresh(rental).status == S.STOPPING


def test_the_failed_offer_counts_the_failure_not_the_next_one(fake, rent, second, offer):
    fake.fail["create"] = [OfferUnavailable("no_such_ask", status=400)]
    provision(rent().rental)
    failed = RentalEvent.objects.filter(data__provision_failed=True)
    assert [e.data["failed_offer_id"] for e in failed] == [offer.pk]


def test_candidates_same_model_or_with_the_flag_any_model_with_the_vram(fake, make_rental, make_offer, offer):
    bigger = make_offer(
        provider="fakecloud", provider_offer_id="fc-a6000", price_per_hour="1.5500", gpu_count=2,
        gpu_type="RTX A6000 48GB", vram_gb=48,
    )  # fmt: skip
    smaller = make_offer(
        provider="fakecloud", provider_offer_id="fc-3080", price_per_hour="1.0000", gpu_count=2,
        gpu_type="RTX 3080 10GB", vram_gb=10,
    )  # fmt: skip
    same = make_offer(
        provider="fakecloud", provider_offer_id="fc-2", price_per_hour="1.6000", gpu_count=2, gpu_type=GPU
    )
    make_offer(
        provider="fakecloud", provider_offer_id="fc-1gpu", price_per_hour="0.8000", gpu_count=1, gpu_type=GPU
    )
    rental = make_rental(
        gpu_type=GPU,
        gpu_count=2,
        vram_gb=24,
        price_per_hour=Decimal("1.5000"),
        max_price_per_hour=Decimal("1.6500"),
    )

    assert failover.failover_candidates(rental) == [same]
    rental.failover_any_gpu = True
    assert failover.failover_candidates(rental) == [bigger, same]
    assert smaller not in failover.failover_candidates(rental)


# -- the ceiling: bad input is refused, nothing is created -------------------------------------------
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.40", "The price ceiling must be at least the offer's price ($1.5000/h)."),
        ("lots", "Give the price ceiling in $/h, e.g. 1.65."),
        ("1e9", "Give the price ceiling in $/h, e.g. 1.65."),
    ],
)
def test_a_bad_ceiling_is_refused_and_nothing_is_rented(fake, rent, value, message):
    with pytest.raises(ValidationError) as err:
        rent(max_price_per_hour=value)
    assert err.value.message_dict == {"max_price_per_hour": [message]}
    assert not Rental.objects.exists() and fake.calls == [("get_offer", "fc-1")]


def test_the_default_ceiling_is_the_price_plus_ten_percent(fake, rent):
    rental = rent().rental
    assert rental.max_price_per_hour == Decimal("1.6500") and rental.failover and not rental.failover_any_gpu


def test_the_api_takes_and_shows_the_failover_settings(fake, offer, api_client):
    body = {"offer_id": str(offer.pk), "reservation_hours": "2", "generate_key": True}
    answer = api_client.post(
        "/api/v1/sessions", {**body, "max_price_per_hour": "1.9", "failover": False}, format="json"
    )
    assert answer.status_code == 201, answer.content
    data = answer.json()
    assert (data["max_price_per_hour"], data["failover"], data["failover_any_gpu"]) == (
        "1.9000",
        False,
        False,
    )

    bad = api_client.post("/api/v1/sessions", {**body, "max_price_per_hour": "1.0"}, format="json")
    assert bad.status_code == 400 and "max_price_per_hour" in str(bad.json())
    assert Rental.objects.count() == 1


def test_the_schema_documents_the_failover_fields(api_client):
    schema = api_client.get("/api/v1/schema/").content.decode()
    for name in ("max_price_per_hour", "failover_any_gpu", "failover"):
        assert name in schema


def test_the_session_page_lists_each_attempt(fake, rent, second, client, user):
    fake.fail["create"] = [OfferUnavailable("no_such_ask", status=400)]
    rental = provision(rent().rental)
    client.force_login(user)
    html = client.get(reverse("sessions:detail", args=[rental.pk])).content.decode()
    assert 'data-attempt="1"' in html and f"fakecloud offer {second.pk} at $1.6000/h" in html
    assert "Failover 1/3: the offer was gone" in html  # the timeline says why


@pytest.mark.django_db(transaction=True)
def test_a_failover_and_a_new_rental_cannot_both_squeeze_under_the_budget(
    fake, rent, second, user, make_offer
):
    """Race-tested like renting (tests/costs/test_budgets.py): the move reserves its difference
    under the same rentals lock, so of a failover (+$0.20) and a new $1.00 rental only one fits."""
    rental = rent().rental  # $3.00 reserved (2 h at $1.5000/h)
    Rental.objects.filter(pk=rental.pk).update(status=S.PROVISIONING)
    rental.status = S.PROVISIONING
    fake.add_offer("fc-3", "1.0000", gpu_count=1)
    other = make_offer(provider="fakecloud", provider_offer_id="fc-3", price_per_hour="1.0000", gpu_count=1)
    Budget.objects.create(user=user, monthly_limit=Decimal("4.10"))
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def retrying(name, work):
        try:
            barrier.wait(timeout=5)
            for _ in range(10_000):
                try:
                    results[name] = work()
                    break
                except OperationalError as exc:
                    if "locked" not in str(exc):
                        raise
        except Exception as exc:  # recorded, asserted below
            results[name] = exc
        finally:
            connection.close()

    threads = [
        threading.Thread(
            target=retrying, args=("move", lambda: failover.failover_move(rental, failover.OFFER_GONE, "x"))
        ),
        threading.Thread(
            target=retrying,
            args=("new", lambda: rental_create(user=user, offer_id=other.pk, reservation_hours=1)),
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    moved, new = results["move"], results["new"]
    if moved is True:  # the failover took the room: the new rental is refused
        assert isinstance(new, BudgetExceeded), results
    else:  # the new rental took it: the failover is refused, on the timeline
        assert moved is False and isinstance(new, RentalCreated), results
        assert any("Budget exceeded" in e.reason for e in events(rental, EventKind.WARNING))
    assert Rental.objects.count() == 1 + (moved is not True)
    assert Decimal(budget_status(user=user)["user"]["reserved"]) <= Decimal("4.10")


def test_an_offer_our_history_says_fails_is_not_a_candidate(fake, make_rental, make_offer, settings):
    """The confidence floor (SHOPPER_FAILOVER_MIN_CONFIDENCE, inventory/confidence.py)."""
    from inventory.models import OutcomeKind, ProvisionOutcome

    flaky = make_offer(
        provider="fakecloud", provider_offer_id="fc-flaky", price_per_hour="1.5500", gpu_count=2, gpu_type=GPU
    )
    solid = make_offer(
        provider="fakecloud", provider_offer_id="fc-solid", price_per_hour="1.6000", gpu_count=2, gpu_type=GPU
    )
    rental = make_rental(
        gpu_type=GPU, gpu_count=2, vram_gb=24,
        price_per_hour=Decimal("1.5000"), max_price_per_hour=Decimal("1.6500"),
    )  # fmt: skip
    assert failover.failover_candidates(rental) == [flaky, solid]  # no history: the prior, cheapest first
    # Evidence about that offer alone (no GPU model: the model-level fallback would reach both).
    for _ in range(12):  # (4 × prior + 0) / (4 + 12) is below the floor for any prior <= 0.8
        ProvisionOutcome.objects.create(
            provider="fakecloud", provider_offer_id="fc-flaky", kind=OutcomeKind.SSH_NEVER_UP
        )
    assert failover.failover_candidates(rental) == [solid]
    settings.SHOPPER_FAILOVER_MIN_CONFIDENCE = 0
    assert failover.failover_candidates(rental) == [flaky, solid]


def test_the_outcome_is_recorded_against_the_offer_that_failed(fake, rent, second, offer):
    from inventory.models import OutcomeKind, ProvisionOutcome

    fake.fail["create"] = [OfferUnavailable("no_such_ask", status=400)]
    rental = provision(rent().rental)
    assert rental.status == S.ACTIVE and rental.offer_id == second.pk
    outcomes = dict(ProvisionOutcome.objects.values_list("provider_offer_id", "kind"))
    assert outcomes == {offer.provider_offer_id: OutcomeKind.OFFER_GONE, "fc-2": OutcomeKind.SUCCESS}
