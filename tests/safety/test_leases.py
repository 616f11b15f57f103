"""Provisioning and teardown leases: renewed at every wait, so a live worker keeps its rental however
long the work takes, a dead worker's rental is resumed once its lease expires, and a worker that
lost its lease (stalled past it while another took over) stops instead of working in parallel.

This is what makes restarting the safety loop alone safe: its recovery never clears a lease."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sessions import services
from sessions.models import Status
from sessions.provisioning import rental_provision, rentals_resume_provisioning
from sessions.reconcile import recover_on_start
from sessions.teardown import rental_teardown, rentals_resume_stopping
from tests.safety.test_recovery import PROVISION, Killed, run_enqueued
from tests.sessions.conftest import START, fresh

S = Status


def test_a_provisioning_longer_than_the_lease_keeps_it_and_is_never_taken_over(
    fake, rent, settings, django_capture_on_commit_callbacks
):
    rental = rent().rental
    fake.enqueued.clear()
    # Booting takes 100 polls of 5 s: far longer than one lease.
    fake.boot_polls = 100
    assert 100 * settings.SHOPPER_POLL_INTERVAL_SECONDS > 2 * settings.SHOPPER_LEASE_SECONDS
    seen = []

    def another_worker_tries(_instance_id):
        # Halfway through, a safety loop restarts and its sweep runs; then a duplicate task.
        if len(seen) == 60:
            with django_capture_on_commit_callbacks(execute=True):
                recover_on_start()
            seen.append(("sweep", rentals_resume_provisioning()))
            rental_provision(rental_id=rental.pk, waits=fake.waits)
        seen.append(fresh(rental).provision_claimed_until)

    fake.hooks["get"] = another_worker_tries
    rental_provision(rental_id=rental.pk, waits=fake.waits)

    assert fresh(rental).status == S.ACTIVE
    assert fake.count("create") == 1
    assert ("sweep", 0) in seen and PROVISION not in {f for f, *_ in fake.enqueued}
    leases = [lease for lease in seen if not isinstance(lease, tuple)]
    assert all(lease is not None and lease > START for lease in leases)
    assert leases[-1] > START + timedelta(seconds=settings.SHOPPER_LEASE_SECONDS)  # it was renewed
    assert fresh(rental).provision_claimed_until is None  # given back at the end


def test_a_worker_that_lost_its_lease_stops_at_its_next_wait(fake, rent):
    rental = rent().rental
    fake.boot_polls = 10
    taken_over = START + timedelta(hours=1)

    def stalled_then_taken_over(_instance_id):
        # This worker stalled past its lease; another worker claimed the rental meanwhile.
        type(rental).objects.filter(pk=rental.pk).update(provision_claimed_until=taken_over)

    fake.hooks["get"] = stalled_then_taken_over
    rental_provision(rental_id=rental.pk, waits=fake.waits)

    rental = fresh(rental)
    assert rental.status == S.BOOTING  # it did not go on to verify SSH beside the new owner
    assert fake.count("get") == 1 and fake.ssh_calls == []
    assert rental.provision_claimed_until == taken_over  # and it did not release the new lease
    assert fake.count("create") == 1


def test_a_dead_workers_provisioning_is_resumed_once_its_lease_expires(
    fake, rent, settings, django_capture_on_commit_callbacks
):
    rental = rent().rental
    fake.enqueued.clear()
    fake.boot_polls = 3

    def killed(_instance_id):
        raise Killed

    fake.hooks["get"] = killed  # the worker dies while the instance boots
    with pytest.raises(Killed):
        rental_provision(rental_id=rental.pk, waits=fake.waits)
    del fake.hooks["get"]
    # SIGKILL runs no `finally`: the lease stays as the dead worker last renewed it.
    held = START + timedelta(seconds=settings.SHOPPER_LEASE_SECONDS)
    type(rental).objects.filter(pk=rental.pk).update(provision_claimed_until=held)
    assert fresh(rental).status == S.BOOTING

    with django_capture_on_commit_callbacks(execute=True):
        assert recover_on_start()["provisioning_resumed"] == 0
        assert rentals_resume_provisioning() == 0
    assert fake.enqueued == []

    fake.sleep(settings.SHOPPER_LEASE_SECONDS + 1)
    with django_capture_on_commit_callbacks(execute=True):
        assert rentals_resume_provisioning() == 1
    run_enqueued(fake, django_capture_on_commit_callbacks)

    assert fresh(rental).status == S.ACTIVE
    assert fake.count("create") == 1 and len(fake.instances) == 1
    assert fresh(rental).provision_claimed_until is None


def test_the_sweep_leaves_a_rental_whose_first_task_is_still_queued(fake, rent, settings):
    rental = rent().rental
    fake.enqueued.clear()
    assert rentals_resume_provisioning() == 0
    fake.sleep(settings.SHOPPER_LEASE_SECONDS + 1)  # the queue lost it, or no worker ran
    assert rentals_resume_provisioning() == 1
    assert fake.enqueued == [(PROVISION, rental.pk)]


def test_a_teardown_longer_than_the_lease_keeps_it(fake, active_rental, settings):
    rental = active_rental()
    services.rental_stop(rental=rental, reason="Done")
    fake.enqueued.clear()
    fake.destroy_lag = 20  # the provider says "deleting" for a long time (about 17 min of backoff)
    swept = []
    fake.hooks["get"] = lambda _id: swept.append(rentals_resume_stopping())

    assert rental_teardown(rental_id=rental.pk, budget_seconds=3000, waits=fake.waits) is True

    assert fresh(rental).status == S.DESTROYED
    assert len(swept) > 10 and set(swept) == {0}  # never handed to another worker meanwhile
    assert fake.mono - 1_000.0 > 2 * settings.SHOPPER_LEASE_SECONDS
    assert fresh(rental).teardown_claimed_until is None
