"""Issue 12, "destroys healthy machines": silence that was ours never counts against an agent, and
a ghost is an instance the provider says does not exist, never one a listing omitted.

- After an outage (web, safety loop or both unseen longer than SHOPPER_UPTIME_GAP_SECONDS) every
  agent gets a full heartbeat timeout from the moment the shopper is up again.
- While the web side is down nothing counts as missed.
- A restart shorter than the gap changes nothing: a really silent agent is still stopped on time.
- Ghosts: rentals younger than the settle time are not counted; two misses only make a suspect,
  a direct get decides.

The process-level versions (a stopped stack, a lagging sandbox listing) are in
tests/e2e/test_chaos.py (tools/chaos.py).
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core.checks import run_checks
from django.utils import timezone

from inventory.providers.base import Transient
from sessions.lifecycle import Enforced, lifecycle_enforce
from sessions.models import DEADLINE_AGENT_SILENT, Alert, AlertKind, Status, UpStretch
from sessions.reconcile import reconcile
from sessions.uptime import SAFETY, WEB, up_stretch_start, uptime_touch, web_beat_forever
from tests.sessions.conftest import START, fresh, transitions

S = Status
SILENT = "The node agent went silent (no heartbeat)"
TIMEOUT = timedelta(seconds=300)


@pytest.fixture
def c(django_capture_on_commit_callbacks):
    return django_capture_on_commit_callbacks


def enforce(c):
    with c(execute=True):
        return lifecycle_enforce()


def outage(fake, *, minutes: float, web_down: bool = True, safety_down: bool = True) -> None:
    """Time passes in 15 s steps; the sides that stay up touch their rows as they would."""
    for _ in range(int(minutes * 4)):
        fake.traveller.shift(timedelta(seconds=15))
        if not web_down:
            uptime_touch(WEB)
        if not safety_down:
            uptime_touch(SAFETY)


def web_back(fake) -> None:
    uptime_touch(WEB)


# --- the up stretch itself ------------------------------------------------------------------------


def test_a_touch_within_the_gap_continues_the_stretch_and_a_later_one_starts_a_new_one(fake):
    UpStretch.objects.all().delete()
    uptime_touch(WEB)
    fake.traveller.shift(timedelta(seconds=59))
    uptime_touch(WEB)
    assert UpStretch.objects.get(role=WEB).since == START

    fake.traveller.shift(timedelta(seconds=61))
    uptime_touch(WEB)
    row = UpStretch.objects.get(role=WEB)
    assert row.since == row.seen_at == START + timedelta(seconds=120)


def test_the_stretch_starts_when_both_sides_are_up_and_not_while_the_web_is_down(fake):
    UpStretch.objects.all().delete()
    uptime_touch(SAFETY)
    assert up_stretch_start() == START  # no web record at all: the safety loop's stretch alone
    fake.traveller.shift(timedelta(seconds=30))
    uptime_touch(WEB)
    assert up_stretch_start() == START + timedelta(seconds=30)  # the later of the two starts

    fake.traveller.shift(timedelta(seconds=90))  # the web has not been seen for 90 s: down
    uptime_touch(SAFETY)
    assert up_stretch_start() is None


def test_a_web_process_beats_until_stopped(fake):
    UpStretch.objects.all().delete()
    stop = threading.Event()
    stop.set()  # one touch, then it returns instead of waiting

    web_beat_forever(stop)

    assert UpStretch.objects.get(role=WEB).seen_at == START


# --- heartbeats after an outage -------------------------------------------------------------------


def test_after_a_whole_stack_outage_agents_get_a_full_timeout(active_rental, fake, mailoutbox, c):
    """The issue's case: the stack stopped for 5 min (an upgrade); every agent's last heartbeat is
    older than the timeout when the safety loop's first pass runs. The old code stopped all."""
    healthy = active_rental(last_heartbeat_at=START - timedelta(seconds=20))
    dead = active_rental(last_heartbeat_at=START - timedelta(seconds=20))
    outage(fake, minutes=5)
    back = timezone.now()
    web_back(fake)

    assert enforce(c) == []  # the first pass after the outage
    assert fresh(healthy).status == S.ACTIVE and fresh(dead).status == S.ACTIVE

    fake.traveller.shift(timedelta(seconds=10))  # the healthy agent heartbeats within seconds
    healthy.last_heartbeat_at = timezone.now()
    healthy.save(update_fields=["last_heartbeat_at"])
    for _ in range(57):  # passes every 5 s up to just before back + timeout
        fake.traveller.shift(timedelta(seconds=5))
        web_back(fake)
        assert enforce(c) == []

    fake.traveller.shift(timedelta(seconds=5))  # back + timeout: the dead one counts now
    web_back(fake)
    assert timezone.now() == back + TIMEOUT
    assert enforce(c) == [Enforced(dead.pk, SILENT, 0.0, DEADLINE_AGENT_SILENT)]
    assert fresh(healthy).status == S.ACTIVE and fresh(dead).status == S.STOPPING
    assert Alert.objects.get().kind == AlertKind.AGENT_SILENT and len(mailoutbox) == 1


@pytest.mark.parametrize("down", ["web", "safety"])
def test_an_outage_of_one_side_also_restarts_the_grace(active_rental, fake, c, down):
    rental = active_rental(last_heartbeat_at=START - timedelta(seconds=20))
    outage(fake, minutes=6, web_down=down == "web", safety_down=down == "safety")
    web_back(fake)

    assert enforce(c) == []
    assert fresh(rental).status == S.ACTIVE

    outage(fake, minutes=5, web_down=False, safety_down=False)  # i.e. both up for one timeout
    assert [e.reason for e in enforce(c)] == [SILENT]


def test_while_the_web_is_down_no_heartbeat_counts_as_missed(active_rental, fake, c):
    rental = active_rental(last_heartbeat_at=START - timedelta(seconds=20))
    for _ in range(20):  # 10 min of safety-loop passes, the web unseen
        fake.traveller.shift(timedelta(seconds=30))
        assert enforce(c) == []
    assert fresh(rental).status == S.ACTIVE and transitions(rental) == []


def test_a_short_restart_keeps_the_stretch_so_silence_still_counts_on_time(active_rental, fake, c):
    """A restart within the gap loses at most a heartbeat or two: no grace, no extra delay."""
    last = START - timedelta(seconds=280)
    rental = active_rental(last_heartbeat_at=last)
    outage(fake, minutes=0.5)  # 30 s: web and safety loop restarted
    web_back(fake)

    assert enforce(c) == [Enforced(rental.pk, SILENT, 10.0, DEADLINE_AGENT_SILENT)]


def test_other_deadlines_get_no_grace(active_rental, fake, c):
    rental = active_rental(reservation_ends_at=START + timedelta(minutes=2))
    outage(fake, minutes=5)
    web_back(fake)

    assert [e.reason for e in enforce(c)] == ["Reservation ended"]
    assert fresh(rental).status == S.STOPPING


# --- the node agent's own failsafe stays consistent ------------------------------------------------


def test_the_agent_failsafe_outlasts_the_heartbeat_timeout(settings):
    assert settings.SHOPPER_AGENT_UNREACHABLE_SECONDS > settings.SHOPPER_HEARTBEAT_TIMEOUT_SECONDS
    assert not [m for m in run_checks() if m.id == "shopper.W012"]

    settings.SHOPPER_AGENT_UNREACHABLE_SECONDS = 200  # would power machines off within one timeout
    [warning] = [m for m in run_checks() if m.id == "shopper.W012"]
    assert "SHOPPER_AGENT_UNREACHABLE_SECONDS" in warning.msg


# --- ghosts ---------------------------------------------------------------------------------------


@pytest.fixture
def witness(active_rental):
    return active_rental()  # keeps the listing non-empty


def cycle(c):
    with c(execute=True):
        return reconcile(provider_name="fakecloud")


def test_a_lagging_listing_makes_no_ghost_when_get_finds_the_instance(
    active_rental, witness, fake, c, mailoutbox
):
    """The old code stopped it after two listings; the provider still runs it."""
    rental = active_rental()
    fake.instances[rental.provider_instance_id].hidden_lists = 3

    for _ in range(3):
        assert cycle(c).ghosts == []
        fake.traveller.shift(timedelta(seconds=30))

    row = fresh(rental)
    assert row.status == S.ACTIVE and transitions(rental) == []
    assert row.missing_count == 3  # still counts listings; the get after each miss from the second on
    assert fake.args("get").count(rental.provider_instance_id) == 2
    assert not Alert.objects.exists() and mailoutbox == [] and fake.enqueued == []


def test_a_fresh_rental_is_not_counted_while_the_listing_settles(active_rental, witness, fake, c):
    rental = active_rental(created_at=START - timedelta(seconds=60), active_since=START)
    del fake.instances[rental.provider_instance_id]  # whatever the listing says, it is too young

    for _ in range(2):
        assert cycle(c).ghosts == []
    assert fresh(rental).missing_count == 0 and fresh(rental).status == S.ACTIVE

    fake.traveller.shift(timedelta(seconds=60))  # 120 s old: settled, counted from now on
    cycle(c)
    assert fresh(rental).missing_count == 1


def test_a_get_that_fails_leaves_the_suspect_undecided(active_rental, witness, fake, c, mailoutbox):
    rental = active_rental(missing_count=1)
    del fake.instances[rental.provider_instance_id]
    fake.fail["get"] = [Transient("503 Service Unavailable", status=503)]

    assert cycle(c).ghosts == []
    assert fresh(rental).status == S.ACTIVE and fresh(rental).missing_count == 2
    assert not Alert.objects.exists()

    result = cycle(c)  # the next cycle asks again; NotFound now: a ghost
    assert result.ghosts == [str(rental.pk)]
    assert fresh(rental).status == S.STOPPING
    assert "not found by id" in fresh(rental).status_detail
