"""rental_stop and the verified teardown (rule 3): destroyed only once the provider says NotFound,
destroy errors retried while the rental stays stopping, one teardown at a time (the lease)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from inventory.providers.base import STATE_RUNNING, AuthFailed, NotFound, Transient
from sessions import teardown
from sessions.models import Rental, RentalEvent, Status
from sessions.provisioning import rental_provision
from sessions.services import AlreadyEnded, rental_stop, rental_transition
from sessions.teardown import rental_teardown, rentals_resume_stopping

from .conftest import START, events, fresh, transitions

pytestmark = pytest.mark.django_db

S = Status
TEARDOWN = "sessions.tasks.teardown"


@pytest.fixture
def active(fake, rent):
    """An active rental with a generated key and a running instance at the fake cloud."""
    rental = rent().rental
    rental_provision(rental_id=rental.pk, waits=fake.waits)
    rental = fresh(rental)
    assert rental.status == S.ACTIVE and rental.has_generated_key and rental.agent_token_hash
    fake.calls.clear()
    fake.sleeps.clear()
    return rental


@pytest.fixture
def stopping(active, user):
    assert rental_stop(rental=active, reason="Done: the work is finished", actor=user)
    return active


# --- rental_stop -----------------------------------------------------------------------------------
def test_done_moves_an_active_rental_to_stopping_and_enqueues_teardown_on_commit(
    fake, active, user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        returned = rental_stop(rental=active, reason="Done: the work is finished", actor=user)
        assert fake.enqueued == []

    assert len(callbacks) == 1
    assert fake.enqueued == [(TEARDOWN, active.pk)]
    assert returned is True and active.status == S.STOPPING
    row = fresh(active)
    assert (row.status, row.stop_requested_at) == (S.STOPPING, START + timedelta(seconds=5))
    event = RentalEvent.objects.filter(rental=active).last()
    assert (event.from_status, event.to_status, event.actor) == (S.ACTIVE, S.STOPPING, user)
    assert event.reason == "Done: the work is finished"
    assert fake.calls == []  # stopping itself calls no provider


def test_done_twice_returns_the_same_stopping_rental(
    fake, stopping, user, django_capture_on_commit_callbacks
):
    before = RentalEvent.objects.filter(rental=stopping).count()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = rental_stop(rental=stopping, reason="Done again", actor=user)
    assert again is False and stopping.status == S.STOPPING  # not moved by this call
    assert callbacks == []  # no second teardown enqueued
    assert RentalEvent.objects.filter(rental=stopping).count() == before
    assert fresh(stopping).status_detail == "Done: the work is finished"


def test_done_with_a_stale_copy_returns_the_stopping_rental(fake, active, user):
    stale = Rental.objects.get(pk=active.pk)
    rental_stop(rental=active, reason="Done", actor=user)

    again = rental_stop(rental=stale, reason="Force shutdown", actor=user)

    assert again is False and stale.status == S.STOPPING
    assert transitions(active).count((S.ACTIVE, S.STOPPING)) == 1


@pytest.mark.parametrize("status", [S.PENDING, S.PROVISIONING, S.BOOTING, S.VERIFYING])
def test_any_live_status_can_be_stopped(fake, make_rental, status):
    rental = make_rental(status=status)
    assert rental_stop(rental=rental, reason="Done") is True and rental.status == S.STOPPING
    assert transitions(rental) == [(status, S.STOPPING)]


@pytest.mark.parametrize("status", [S.DESTROYED, S.FAILED])
def test_done_after_the_end_raises_already_ended(fake, make_rental, status):
    rental = make_rental(status=status)
    with pytest.raises(AlreadyEnded, match=f"already ended \\({status}\\)") as err:
        rental_stop(rental=rental, reason="Done")
    assert (err.value.code, err.value.status) == ("already_ended", 409)
    assert fresh(rental).status == status
    assert not RentalEvent.objects.filter(rental=rental).exists()


def test_done_after_destroyed_raises_already_ended(fake, stopping):
    assert rental_teardown(rental_id=stopping.pk, waits=fake.waits) is True
    with pytest.raises(AlreadyEnded, match=r"already ended \(destroyed\)"):
        rental_stop(rental=fresh(stopping), reason="Done")
    assert transitions(stopping)[-1] == (S.STOPPING, S.DESTROYED)


# --- teardown --------------------------------------------------------------------------------------
def test_teardown_destroys_and_marks_destroyed_once_the_provider_confirms(fake, stopping):
    iid = stopping.provider_instance_id

    assert rental_teardown(rental_id=stopping.pk, waits=fake.waits) is True

    rental = fresh(stopping)
    assert rental.status == S.DESTROYED
    assert rental.ended_at == timezone.now()
    assert fake.instances == {}
    assert fake.calls == [("destroy", iid), ("get", iid)]
    assert rental.status_detail == f"Fake Cloud confirmed instance {iid} is gone"
    assert transitions(rental)[-2:] == [(S.ACTIVE, S.STOPPING), (S.STOPPING, S.DESTROYED)]
    assert rental.teardown_claimed_until is None


def test_it_is_not_destroyed_until_get_instance_raises_not_found(fake, stopping):
    fake.destroy_lag = 2  # the provider accepted the destroy but still lists it as deleting
    iid = stopping.provider_instance_id

    # A budget that allows two rounds only: both see "deleting", so the rental stays stopping.
    assert rental_teardown(rental_id=stopping.pk, budget_seconds=6, waits=fake.waits) is False
    assert fresh(stopping).status == S.STOPPING
    assert fake.ops() == ["destroy", "get", "destroy", "get"]
    assert iid in fake.instances

    assert rental_teardown(rental_id=stopping.pk, waits=fake.waits) is True
    assert fresh(stopping).status == S.DESTROYED
    assert fake.ops()[-2:] == ["destroy", "get"]
    assert fake.instances == {}


def test_destroy_failing_n_times_keeps_stopping_with_n_error_events_then_destroys(fake, stopping):
    fake.fail["destroy"] = [Transient("502"), Transient("timeout"), AuthFailed("flaky auth")]

    assert rental_teardown(rental_id=stopping.pk, waits=fake.waits) is True

    rental = fresh(stopping)
    assert rental.status == S.DESTROYED
    errors = events(rental, "error")
    assert [e.reason for e in errors] == [
        "Destroy attempt 1 failed: transient: 502",
        "Destroy attempt 2 failed: transient: timeout",
        "Destroy attempt 3 failed: auth_failed: flaky auth",
    ]
    assert [e.data for e in errors] == [{"attempt": n, "cause": "destroy_failed"} for n in (1, 2, 3)]
    assert fake.count("destroy") == 4 and fake.count("get") == 1
    assert fake.sleeps == [5, 10, 20]  # backoff doubles
    # No status change while failing: stopping stays until the provider confirms.
    assert transitions(rental)[-2:] == [(S.ACTIVE, S.STOPPING), (S.STOPPING, S.DESTROYED)]


def test_destroy_errors_keep_the_rental_stopping_in_between(fake, stopping):
    seen = []
    fake.fail["destroy"] = [Transient("502")] * 2
    fake.hooks["destroy"] = lambda _: seen.append(fresh(stopping).status)
    rental_teardown(rental_id=stopping.pk, waits=fake.waits)
    assert seen == [S.STOPPING, S.STOPPING, S.STOPPING]


def test_a_destroy_answering_not_found_is_believed_only_after_get_instance_agrees(fake, stopping):
    iid = stopping.provider_instance_id
    fake.fail["destroy"] = [NotFound("gone")]
    assert rental_teardown(rental_id=stopping.pk, waits=fake.waits) is True
    # the fake still had it: destroy said NotFound, but get_instance answered and the loop went on
    assert fake.ops() == ["destroy", "get", "destroy", "get"]
    assert fake.instances == {} and iid not in fake.instances


def test_a_budget_that_runs_out_leaves_it_stopping_releases_the_lease_and_the_sweep_resumes_it(
    fake, stopping
):
    fake.fail["destroy"] = [Transient("503")] * 100

    assert rental_teardown(rental_id=stopping.pk, budget_seconds=30, waits=fake.waits) is False

    rental = fresh(stopping)
    assert rental.status == S.STOPPING
    assert rental.teardown_claimed_until is None  # lease released
    assert fake.count("destroy") == 3  # t = 0, 5, 15; the next backoff (20) would pass 30
    assert len(events(rental, "error")) == 3
    assert stopping.provider_instance_id in fake.instances  # billing visible, still there

    assert rentals_resume_stopping() == 1
    assert fake.enqueued == [(TEARDOWN, rental.pk)]

    fake.fail["destroy"].clear()
    fake.run_tasks = True
    fake.enqueued.clear()
    assert rentals_resume_stopping() == 1
    assert fresh(stopping).status == S.DESTROYED
    assert fake.instances == {}
    assert rentals_resume_stopping() == 0


def test_the_sweep_skips_rentals_whose_teardown_holds_the_lease(fake, stopping, make_rental):
    Rental.objects.filter(pk=stopping.pk).update(teardown_claimed_until=timezone.now() + timedelta(minutes=5))
    expired = make_rental(status=S.STOPPING, teardown_claimed_until=timezone.now() - timedelta(seconds=1))
    make_rental(status=S.ACTIVE)
    make_rental(status=S.DESTROYED)

    assert rentals_resume_stopping() == 1
    assert fake.enqueued == [(TEARDOWN, expired.pk)]


def test_a_second_teardown_while_the_lease_is_held_does_nothing(fake, stopping):
    held_until = timezone.now() + timedelta(minutes=5)
    Rental.objects.filter(pk=stopping.pk).update(teardown_claimed_until=held_until)

    assert rental_teardown(rental_id=stopping.pk, waits=fake.waits) is False

    rental = fresh(stopping)
    assert fake.calls == []
    assert (rental.status, rental.teardown_claimed_until) == (S.STOPPING, held_until)  # not released
    assert not events(rental, "error")


def test_a_teardown_started_during_another_teardown_does_nothing(fake, stopping):
    inner = []
    fake.hooks["destroy"] = lambda _: inner.append(rental_teardown(rental_id=stopping.pk, waits=fake.waits))

    assert rental_teardown(rental_id=stopping.pk, waits=fake.waits) is True

    assert inner == [False]
    assert fake.count("destroy") == 1
    assert transitions(stopping).count((S.STOPPING, S.DESTROYED)) == 1


def test_an_expired_lease_is_taken_over(fake, stopping):
    Rental.objects.filter(pk=stopping.pk).update(teardown_claimed_until=timezone.now() - timedelta(seconds=1))
    assert rental_teardown(rental_id=stopping.pk, waits=fake.waits) is True
    assert fresh(stopping).status == S.DESTROYED


def test_teardown_of_a_destroyed_rental_reports_true_without_provider_calls(fake, stopping):
    rental_teardown(rental_id=stopping.pk, waits=fake.waits)
    fake.calls.clear()
    assert rental_teardown(rental_id=stopping.pk, waits=fake.waits) is True
    assert fake.calls == []
    assert transitions(stopping).count((S.STOPPING, S.DESTROYED)) == 1


@pytest.mark.parametrize("status", [S.ACTIVE, S.PENDING])
def test_teardown_never_touches_a_rental_that_is_not_stopping(fake, make_rental, status):
    rental = make_rental(status=status, provider_instance_id="1234")
    assert rental_teardown(rental_id=rental.pk, waits=fake.waits) is False
    assert fake.calls == [] and fresh(rental).status == status


def test_teardown_of_an_unknown_rental_is_false(fake):
    assert rental_teardown(rental_id=uuid.uuid4(), waits=fake.waits) is False


def test_it_clears_the_generated_key_and_the_agent_token_at_destroyed(fake, stopping):
    assert stopping.ssh_private_key_encrypted and stopping.agent_token_hash
    rental_teardown(rental_id=stopping.pk, waits=fake.waits)
    rental = fresh(stopping)
    assert (rental.ssh_private_key_encrypted, rental.agent_token_hash) == ("", "")
    assert not rental.has_generated_key


def test_the_key_and_token_survive_while_the_destroy_is_still_failing(fake, stopping):
    fake.fail["destroy"] = [Transient("503")] * 100
    rental_teardown(rental_id=stopping.pk, budget_seconds=10, waits=fake.waits)
    rental = fresh(stopping)
    assert rental.status == S.STOPPING and rental.ssh_private_key_encrypted and rental.agent_token_hash


# --- teardown without a stored instance id -------------------------------------------------------
def test_a_rental_that_never_reached_provisioning_is_destroyed_without_a_destroy_call(fake, rent):
    rental = rent().rental
    rental_stop(rental=rental, reason="Changed my mind")

    assert rental_teardown(rental_id=rental.pk, waits=fake.waits) is True

    rental = fresh(rental)
    assert rental.status == S.DESTROYED
    assert fake.count("destroy") == 0 and fake.count("create") == 0
    assert fake.ops() == ["get_offer", "list"]
    assert rental.status_detail == "No instance was ever created (confirmed by label lookup)"
    assert transitions(rental) == [("", S.PENDING), (S.PENDING, S.STOPPING), (S.STOPPING, S.DESTROYED)]
    assert rental.ssh_private_key_encrypted == ""


def test_it_finds_an_instance_by_label_when_the_id_was_never_stored(fake, make_rental):
    rental = make_rental(status=S.PROVISIONING)
    inst = fake.add_instance(rental.label, state=STATE_RUNNING)
    fake.add_instance("shopper-someone-else")
    rental_transition(rental, S.STOPPING, reason="Done")

    assert rental_teardown(rental_id=rental.pk, waits=fake.waits) is True

    rental = fresh(rental)
    assert rental.status == S.DESTROYED
    assert rental.provider_instance_id == inst.instance_id
    assert fake.args("destroy") == [inst.instance_id]
    assert next(iter(fake.instances.values())).label == "shopper-someone-else"  # only ours


def test_it_waits_for_a_create_that_may_still_be_in_flight(fake, rent):
    """Stopped right after provisioning began, with no id stored: the create may still be on
    the wire, so an empty listing is not believed until SHOPPER_CREATE_SETTLE_SECONDS passed."""
    rental = rent().rental
    rental_transition(rental, S.PROVISIONING, reason="Creating")
    rental_stop(rental=rental, reason="Done")
    late = {}
    # The create lands 30 s later and is hidden from one more listing.
    fake.hooks["list"] = lambda _: (
        timezone.now() >= START + timedelta(seconds=30)
        and not late
        and late.setdefault("inst", fake.add_instance(rental.label))
    )

    assert rental_teardown(rental_id=rental.pk, waits=fake.waits) is True

    rental = fresh(rental)
    assert rental.status == S.DESTROYED
    assert rental.provider_instance_id == late["inst"].instance_id
    assert fake.args("destroy") == [late["inst"].instance_id]
    assert fake.instances == {}


def test_an_empty_listing_is_believed_once_the_create_settle_time_passed(fake, rent):
    rental = rent().rental
    rental_transition(rental, S.PROVISIONING, reason="Creating")
    rental_stop(rental=rental, reason="Done")

    assert rental_teardown(rental_id=rental.pk, waits=fake.waits) is True

    assert fresh(rental).status == S.DESTROYED
    assert fake.count("destroy") == 0
    assert sum(fake.sleeps) >= 120  # waited out SHOPPER_CREATE_SETTLE_SECONDS
    assert fake.sleeps == [5, 10, 20, 40, 60]  # lookups at t = 0, 5, 15, 35, 75, 135
    assert fake.count("list") == 6


def test_a_failing_listing_never_reads_as_nothing_created(fake, make_rental):
    rental = make_rental(status=S.PENDING)
    rental_stop(rental=rental, reason="Done")
    fake.fail["list"] = [Transient("503")] * 100

    assert rental_teardown(rental_id=rental.pk, budget_seconds=30, waits=fake.waits) is False

    assert fresh(rental).status == S.STOPPING
    assert [e.reason for e in events(rental, "error")] == [
        f"Destroy attempt {n} failed: transient: 503" for n in (1, 2, 3)
    ]
    assert fake.count("destroy") == 0


def test_teardown_resumes_with_a_fresh_provider_after_a_crash(fake, stopping, monkeypatch):
    """A teardown that crashed (a non-provider error) releases its lease, so the sweep can retry."""

    def boom(*a, **k):
        raise RuntimeError("worker killed")

    monkeypatch.setattr(teardown, "_destroy_once", boom)
    with pytest.raises(RuntimeError):
        rental_teardown(rental_id=stopping.pk, waits=fake.waits)
    assert fresh(stopping).teardown_claimed_until is None
    assert rentals_resume_stopping() == 1
