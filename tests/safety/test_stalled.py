"""Work handed to the task queue that never starts (a jammed django-q2 cluster): the safety loop
runs the teardown itself after SHOPPER_QUEUE_STALL_SECONDS, fails provisioning that never left
``pending``, raises one alert, and never acts on work a live worker holds.

The process-level proof (idle workers SIGKILLed, every due teardown done within 2 min) is
tests/e2e/test_stalled_queue.py."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest

from sessions import services, stalled, tasks
from sessions.models import Alert, AlertKind, EventKind, QueueProbe, Status
from sessions.services import rental_stop
from sessions.stalled import queue_health, queue_stalled_takeover
from sessions.teardown import rentals_resume_stopping
from tests.fakes import _real_enqueue
from tests.sessions.conftest import START, events, fresh

S = Status
TEARDOWN = "sessions.tasks.teardown"


@pytest.fixture(autouse=True)
def queue(fake, settings):
    """The fake's enqueue (records, runs nothing: a jammed queue) behind the real bookkeeping
    of ``sessions.queue.django_q_enqueue``, which records when work was handed over."""
    settings.SHOPPER_QUEUE_STALL_SECONDS = 60
    settings.SHOPPER_QUEUE_TAKEOVER_SECONDS = 20

    def enqueue(func, *args):
        kind = func.rsplit(".", 1)[-1]
        if kind in stalled.MARKERS:
            stalled.work_queued(args[0], kind)
        fake.enqueue(func, *args)

    settings.SHOPPER_TASK_QUEUE = enqueue
    return fake


@pytest.fixture
def stopping(active_rental, django_capture_on_commit_callbacks):
    """An active rental the user just stopped: its teardown is in the (jammed) queue."""

    def make():
        rental = active_rental()
        with django_capture_on_commit_callbacks(execute=True):
            assert rental_stop(rental=rental, reason="Done")
        return fresh(rental)

    return make


def test_the_real_enqueue_records_the_hand_over_and_the_task_clears_it(active_rental):
    rental = active_rental(status=S.STOPPING)
    with mock.patch("django_q.tasks.async_task") as async_task:
        _real_enqueue(TEARDOWN, rental.pk)  # the production queue as the product calls it
    assert async_task.call_count == 1
    assert fresh(rental).teardown_queued_at == START
    # The task records that it started before doing anything.
    with mock.patch.object(tasks.teardowns, "rental_teardown"):
        tasks.teardown(rental.pk)
    assert fresh(rental).teardown_queued_at is None


def test_a_teardown_the_queue_never_starts_is_run_by_the_loop_after_the_bound(fake, stopping, mailoutbox):
    rental = stopping()
    assert fresh(rental).teardown_queued_at == START
    fake.traveller.shift(timedelta(seconds=59))
    assert queue_stalled_takeover(waits=fake.waits) == {}
    assert fresh(rental).status == S.STOPPING and fake.count("destroy") == 0

    fake.traveller.shift(timedelta(seconds=2))
    summary = queue_stalled_takeover(waits=fake.waits)

    assert summary["teardowns_run"] == 1 and summary["destroyed"] == 1
    assert fresh(rental).status == S.DESTROYED and not fake.instances
    (alert,) = Alert.objects.filter(kind=AlertKind.QUEUE_STALLED)
    assert "did not start queued work within 60 s" in alert.message and "1 teardown" in alert.message
    assert len(mailoutbox) == 1 and "Task queue stalled" in mailoutbox[0].subject
    (warning,) = [e for e in events(rental, EventKind.WARNING) if "queue_stalled" in e.data]
    assert "safety loop runs it" in warning.reason


def test_re_enqueues_by_the_sweeps_do_not_reset_the_clock(fake, stopping):
    rental = stopping()
    Rental = type(rental)
    Rental.objects.filter(pk=rental.pk).update(teardown_claimed_until=None)
    for _ in range(3):  # the sweep re-enqueues every 30 s; none of them starts
        fake.traveller.shift(timedelta(seconds=25))
        rentals_resume_stopping()
    assert fresh(rental).teardown_queued_at == START
    assert queue_stalled_takeover(waits=fake.waits)["destroyed"] == 1


def test_a_teardown_that_started_is_left_to_its_worker(fake, stopping):
    rental = stopping()
    stalled.work_started(rental.pk, "teardown")  # the worker took it (and holds the lease)
    type(rental).objects.filter(pk=rental.pk).update(teardown_claimed_until=START + timedelta(minutes=3))
    fake.traveller.shift(timedelta(minutes=2))
    assert queue_stalled_takeover(waits=fake.waits) == {}
    assert fake.count("destroy") == 0 and not Alert.objects.exists()


def test_a_live_lease_is_never_taken_over_even_with_an_old_marker(fake, stopping):
    rental = stopping()
    type(rental).objects.filter(pk=rental.pk).update(teardown_claimed_until=START + timedelta(minutes=5))
    fake.traveller.shift(timedelta(minutes=2))
    assert queue_stalled_takeover(waits=fake.waits) == {}
    assert fake.count("destroy") == 0


def test_the_alert_is_raised_once_and_resolved_when_a_task_starts_again(fake, stopping):
    first, second = stopping(), stopping()
    fake.fail["destroy"] = [services.ProviderError("boom")] * 50  # stays stopping
    fake.traveller.shift(timedelta(seconds=61))
    queue_stalled_takeover(waits=fake.waits)
    queue_stalled_takeover(waits=fake.waits)
    assert Alert.objects.filter(kind=AlertKind.QUEUE_STALLED, resolved_at__isnull=True).count() == 1
    # One timeline warning per stall, not one per pass.
    assert len([e for e in events(first, EventKind.WARNING) if "queue_stalled" in e.data]) == 1
    fake.fail["destroy"] = []
    with mock.patch.object(tasks.teardowns, "rental_teardown"):
        tasks.teardown(second.pk, waits=fake.waits)  # the queue moves again
    assert not Alert.objects.filter(kind=AlertKind.QUEUE_STALLED, resolved_at__isnull=True).exists()


def test_each_pass_is_bounded_so_deadlines_keep_being_enforced(fake, stopping, settings, monkeypatch):
    rentals = [stopping() for _ in range(3)]
    fake.traveller.shift(timedelta(seconds=61))
    clock = iter(range(0, 1000, 8))  # every teardown seems to take 8 s of the pass
    monkeypatch.setattr(stalled, "_clock", lambda: float(next(clock)))
    summary = queue_stalled_takeover(budget_seconds=20, waits=fake.waits)
    assert summary["teardowns_run"] == 2  # started at 8 s and 16 s; at 24 s the budget is spent
    assert sum(fresh(r).status == S.DESTROYED for r in rentals) == 2
    monkeypatch.undo()
    assert queue_stalled_takeover(waits=fake.waits)["destroyed"] == 1  # the next pass does the rest


def test_pending_whose_provisioning_never_started_fails_without_any_create(
    fake, rent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        rental = rent().rental
    assert fresh(rental).provision_queued_at == START
    fake.traveller.shift(timedelta(seconds=61))
    summary = queue_stalled_takeover(waits=fake.waits)
    rental = fresh(rental)
    assert summary["pending_failed"] == 1 and rental.status == S.FAILED
    assert "did not start provisioning within 60 s" in rental.status_detail
    assert fake.count("create") == 0 and fake.count("destroy") == 0
    # The queued task, should it start after all, does nothing.
    tasks.provision(rental.pk, waits=fake.waits)
    assert fake.count("create") == 0 and fresh(rental).status == S.FAILED


def test_pending_behind_busy_workers_is_a_backlog_not_a_stall(
    fake, rent, make_rental, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        rental = rent().rental
    busy = make_rental(S.BOOTING, provision_claimed_until=START + timedelta(minutes=3))
    fake.traveller.shift(timedelta(seconds=61))
    assert queue_stalled_takeover(waits=fake.waits) == {}
    assert fresh(rental).status == S.PENDING and fresh(busy).status == S.BOOTING


def test_a_resumed_provisioning_that_never_started_is_stopped_and_torn_down(fake, make_rental, mailoutbox):
    rental = make_rental(S.PROVISIONING, provision_queued_at=START)
    inst = fake.add_instance(rental.label, state="running")  # the dead attempt had created it
    fake.traveller.shift(timedelta(seconds=61 + 120))  # past the create settle time too
    summary = queue_stalled_takeover(waits=fake.waits)
    assert summary["provisioning_stopped"] == 1 and summary["destroyed"] == 1
    assert fresh(rental).status == S.DESTROYED and inst.instance_id not in fake.instances


def test_queue_health_probe_and_rental_work(fake, stopping, make_rental):
    assert queue_health(max_age_seconds=60) == (True, "the task queue moves")
    probe = QueueProbe.objects.create(enqueued_at=START)
    fake.traveller.shift(timedelta(seconds=61))
    healthy, why = queue_health(max_age_seconds=60)
    assert not healthy and f"probe {probe.pk}" in why
    stalled.probe_started(probe.pk)
    assert queue_health(max_age_seconds=60)[0]
    # A newer probe that started outweighs an older one the broker lost.
    QueueProbe.objects.create(enqueued_at=START - timedelta(minutes=5))
    assert queue_health(max_age_seconds=60)[0]

    rental = stopping()
    fake.traveller.shift(timedelta(seconds=61))
    healthy, why = queue_health(max_age_seconds=60)
    assert not healthy and "teardown queued 61 s ago" in why
    # Workers busy on a rental: a backlog, not a dead queue.
    make_rental(S.BOOTING, provision_claimed_until=fresh(rental).teardown_queued_at + timedelta(minutes=5))
    assert queue_health(max_age_seconds=60)[0]


def test_while_the_queue_is_known_stalled_new_teardowns_do_not_wait_out_the_bound(fake, stopping):
    stopping()
    fake.traveller.shift(timedelta(seconds=61))
    assert queue_stalled_takeover(waits=fake.waits)["destroyed"] == 1  # raises the alert
    later = stopping()
    fake.traveller.shift(timedelta(seconds=5))  # the next pass, not 60 s later
    assert queue_stalled_takeover(waits=fake.waits)["destroyed"] == 1
    assert fresh(later).status == S.DESTROYED
    # Once a task started (the queue moves; the alert is resolved) the bound applies again.
    with mock.patch.object(tasks.teardowns, "rental_teardown"):
        tasks.teardown(later.pk, waits=fake.waits)
    third = stopping()
    fake.traveller.shift(timedelta(seconds=5))
    assert queue_stalled_takeover(waits=fake.waits) == {} and fresh(third).status == S.STOPPING
