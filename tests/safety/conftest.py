"""Fixtures for the safety systems (DESIGN.md safety rules 4-6): deadlines, extension,
reconciliation, recovery and the safety loop.

The scripted fake cloud of ``tests/sessions/conftest.py`` is reused as is (``fake``, ``offer``,
``make_rental``, ``rent`` and the helpers). On top of it every test here gets:

- an admin address, so ``mail_admins`` really sends (``mailoutbox`` sees each alert email);
- the real providers disabled, so ``reconcile_all`` only talks to the fake cloud;
- the safety settings pinned to the defaults the issue states;
- a shopper that has been up (web and safety loop) for a day, so heartbeat timeouts count as
  they always did unless a test stages an outage (``sessions.uptime``).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sessions.models import EventKind, Rental, RentalEvent, Status, UpStretch
from tests.sessions.conftest import *  # noqa: F403  (fake, offer, make_rental, rent, helpers)

ADMIN_EMAIL = "ops@example.com"


@pytest.fixture(autouse=True)
def safety_env(fake, settings):
    settings.ADMINS = [("Ops", ADMIN_EMAIL)]
    settings.VASTAI_API_KEY = ""
    settings.TENSORDOCK_API_TOKEN = ""
    settings.SHOPPER_HEARTBEAT_TIMEOUT_SECONDS = 300
    settings.SHOPPER_RESERVATION_WARNING_MINUTES = 15
    settings.SHOPPER_ORPHAN_GRACE_SECONDS = 120
    settings.SHOPPER_DESTROY_ALERT_SECONDS = 900
    settings.SHOPPER_HARD_MAX_HOURS = 12
    now = timezone.now()
    for role in ("web", "safety"):
        UpStretch.objects.create(role=role, since=now - timedelta(days=1), seen_at=now)
    return fake


@pytest.fixture
def active_rental(make_rental, fake):
    """An active rental with a running instance at the fake cloud and a fresh heartbeat."""

    def make(**kw) -> Rental:
        now = timezone.now()
        rental = make_rental(Status.PENDING)  # its id gives the label
        inst = fake.add_instance(rental.label, state="running")
        defaults = dict(
            status=Status.ACTIVE,
            provider_instance_id=inst.instance_id,
            created_at=now - timedelta(minutes=15),  # long settled: listings must show it
            active_since=now - timedelta(minutes=10),
            last_heartbeat_at=now - timedelta(seconds=30),
            ssh_host="203.0.113.7",
            ssh_port=40000 + int(inst.instance_id) % 1000,
            ssh_user="root",
        )
        defaults.update(kw)
        Rental.objects.filter(pk=rental.pk).update(**defaults)
        return Rental.objects.get(pk=rental.pk)

    return make


@pytest.fixture
def staff_client(staff, token_client):
    return token_client(staff, "staff-tests")


@pytest.fixture
def other_client(other_user, token_client):
    return token_client(other_user, "other-tests")


def deadline_events(rental: Rental) -> list[RentalEvent]:
    return list(RentalEvent.objects.filter(rental_id=rental.pk, kind=EventKind.DEADLINE).order_by("at", "id"))
