"""One acting safety loop among several (sessions/leader.py): the lease, and a loop that does not
hold it doing nothing. The process-level takeover is in tests/e2e/test_safety_leader.py."""

from __future__ import annotations

import signal
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command

from sessions.leader import lease_current, lease_hold, lease_release
from sessions.management.commands import safety_loop
from sessions.models import SafetyLease, Status
from tests.sessions.conftest import START, fresh

S = Status


@pytest.fixture(autouse=True)
def _keep_signal_handlers(monkeypatch):
    monkeypatch.setattr(signal, "signal", lambda *args: None)


@pytest.fixture
def lease_seconds(settings):
    settings.SHOPPER_SAFETY_LEASE_SECONDS = 20
    return 20


def test_one_holder_at_a_time_and_takeover_only_after_expiry(fake, lease_seconds):
    assert lease_hold("a") is True
    assert lease_hold("b") is False  # a holds it
    assert lease_hold("a") is True  # renewing
    fake.traveller.shift(timedelta(seconds=lease_seconds - 1))
    assert lease_hold("b") is False  # renewed above: still a's
    fake.traveller.shift(timedelta(seconds=2))
    assert lease_hold("b") is True  # a stopped renewing: b takes over
    assert lease_hold("a") is False  # and a, waking up late, no longer acts
    assert lease_current().holder == "b"
    assert SafetyLease.objects.count() == 1


def test_release_hands_over_at_once(fake, lease_seconds):
    assert lease_hold("a")
    lease_release("a")
    assert lease_current() is None
    assert lease_hold("b") is True
    lease_release("a")  # not the holder: changes nothing
    assert lease_current().holder == "b"


def test_a_loop_without_the_lease_does_nothing(fake, active_rental, lease_seconds):
    """Two loops: the one that does not hold the lease enforces no deadline (the old loop did)."""
    expired = active_rental(reservation_ends_at=START - timedelta(seconds=10))
    assert lease_hold("another-host:1:x")

    out = StringIO()
    call_command("safety_loop", "--once", stdout=out)

    assert fresh(expired).status == S.ACTIVE
    assert "standing by" in out.getvalue()
    assert fake.count("list") == 0  # no reconcile, no recovery either
    assert lease_current().holder == "another-host:1:x"


def test_the_lease_holder_acts_and_releases_on_exit(fake, active_rental, lease_seconds):
    expired = active_rental(reservation_ends_at=START - timedelta(seconds=10))

    out = StringIO()
    call_command("safety_loop", "--once", stdout=out)

    assert fresh(expired).status == S.STOPPING
    assert "acting" in out.getvalue()
    assert lease_current() is None  # released: a standby need not wait for the expiry


def test_a_loop_that_loses_the_lease_mid_pass_stops_before_the_next_job(
    fake, active_rental, lease_seconds, monkeypatch
):
    """Paused past its lease while another took over: the pass stops at the next job."""
    expired = active_rental(reservation_ends_at=START - timedelta(seconds=10))
    command = safety_loop.Command()
    assert lease_hold(command.holder)

    def taken_over(*args, **kwargs):
        fake.traveller.shift(timedelta(seconds=lease_seconds + 1))
        assert lease_hold("other")
        return []

    monkeypatch.setattr(safety_loop, "lifecycle_enforce", taken_over)
    ran = []
    monkeypatch.setattr(safety_loop, "idle_enforce", lambda: ran.append("idle"))
    monkeypatch.setattr(safety_loop, "destroys_stuck_alert", lambda: ran.append("alerts"))

    command.tick(reconcile_now=True)

    assert ran == []
    assert fresh(expired).status == S.ACTIVE
