"""``manage.py safety_loop``: recovery at start, then every job each pass; one job failing never
stops the others."""

from __future__ import annotations

import signal
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import OperationalError

from sessions.deployment import deployment_id, make_label
from sessions.management.commands import safety_loop
from sessions.models import Alert, AlertKind, Status
from tests.sessions.conftest import START, fresh

S = Status
PROVISION = "sessions.tasks.provision"
TEARDOWN = "sessions.tasks.teardown"


@pytest.fixture(autouse=True)
def _keep_signal_handlers(monkeypatch):
    """The command installs SIGTERM/SIGINT handlers; keep pytest's own."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)


@pytest.fixture
def world(fake, make_rental, active_rental):
    """One thing for each job to do."""
    return {
        # lifecycle: past its reservation
        "expired": active_rental(reservation_ends_at=START - timedelta(seconds=10)),
        # destroy alerts: stopping for 20 min (its teardown lease long expired)
        "stuck": make_rental(S.STOPPING, stop_requested_at=START - timedelta(minutes=20)),
        # reconcile: an instance with our label and no rental
        "orphan": fake.add_instance(make_label(deployment_id(), uuid.uuid4()), state="running"),
        # recovery: provisioning left half-way by a dead worker
        "half_way": make_rental(S.PROVISIONING),
        # keeps the listing non-empty and must stay untouched
        "fine": active_rental(),
    }


def enqueued(fake, func):
    return sorted(str(args[0]) for f, *args in fake.enqueued if f == func)


def test_once_runs_recovery_and_one_pass_of_every_job(
    fake, world, mailoutbox, django_capture_on_commit_callbacks
):
    out = StringIO()

    with django_capture_on_commit_callbacks(execute=True):
        call_command("safety_loop", "--once", stdout=out)

    assert "recovery: 1 provisioning and 1 teardowns resumed" in out.getvalue()
    assert enqueued(fake, PROVISION) == [str(world["half_way"].pk)]
    # lifecycle
    assert fresh(world["expired"]).status == S.STOPPING
    assert str(world["expired"].pk) in enqueued(fake, TEARDOWN)
    # destroy alerts
    assert Alert.objects.filter(kind=AlertKind.DESTROY_STUCK, rental=world["stuck"]).count() == 1
    # reconcile (recovery and the pass both reconcile: still one alert)
    assert (
        Alert.objects.filter(kind=AlertKind.ORPHAN, provider_instance_id=world["orphan"].instance_id).count()
        == 1
    )
    assert fake.count("destroy") == 0  # inside the grace period
    # resume stopping (at start and in the pass)
    assert enqueued(fake, TEARDOWN).count(str(world["stuck"].pk)) >= 1
    assert fresh(world["fine"]).status == S.ACTIVE
    assert len(mailoutbox) == 2  # the orphan and the stuck destroy, once each


JOBS = {
    "lifecycle": "lifecycle_enforce",
    "destroy alerts": "destroys_stuck_alert",
    "reconcile": "reconcile_all",
    "resume stopping": "rentals_resume_stopping",
}


@pytest.mark.parametrize("broken", list(JOBS))
def test_an_exception_in_one_job_does_not_stop_the_others(
    fake, world, monkeypatch, django_capture_on_commit_callbacks, broken, caplog
):
    def boom(*args, **kwargs):
        raise RuntimeError(f"{broken} exploded")

    monkeypatch.setattr(safety_loop, JOBS[broken], boom)

    with django_capture_on_commit_callbacks(execute=True):
        safety_loop.Command().tick(reconcile_now=True)

    expired, stuck = world["expired"], world["stuck"]
    if broken != "lifecycle":
        assert fresh(expired).status == S.STOPPING
    else:
        assert fresh(expired).status == S.ACTIVE
    has_stuck_alert = Alert.objects.filter(kind=AlertKind.DESTROY_STUCK, rental=stuck).exists()
    assert has_stuck_alert == (broken != "destroy alerts")
    has_orphan_alert = Alert.objects.filter(kind=AlertKind.ORPHAN).exists()
    assert has_orphan_alert == (broken != "reconcile")
    resumed = str(stuck.pk) in enqueued(fake, TEARDOWN)
    assert resumed == (broken != "resume stopping")
    assert f"safety loop: {broken} failed" in caplog.text


def test_without_reconcile_now_only_the_fast_jobs_run(fake, world, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        safety_loop.Command().tick(reconcile_now=False)

    assert fresh(world["expired"]).status == S.STOPPING
    assert Alert.objects.filter(kind=AlertKind.DESTROY_STUCK).count() == 1
    assert fake.count("list") == 0 and not Alert.objects.filter(kind=AlertKind.ORPHAN).exists()


def test_a_recovery_that_raises_does_not_stop_deadline_enforcement(
    fake, world, monkeypatch, django_capture_on_commit_callbacks
):
    """Start-up recovery is one job among the others: if it fails (here SQLite's "database is
    locked"), the loop must still enforce deadlines instead of dying before its first pass."""

    def locked():
        raise OperationalError("database is locked")

    monkeypatch.setattr(safety_loop, "recover_on_start", locked)

    with django_capture_on_commit_callbacks(execute=True):
        call_command("safety_loop", "--once", stdout=StringIO())

    assert fresh(world["expired"]).status == S.STOPPING
    assert Alert.objects.filter(kind=AlertKind.DESTROY_STUCK).count() == 1
