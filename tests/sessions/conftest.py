"""The rental state machine and workflows against the scriptable fake cloud of tests/fakes.py.

Nothing here is autouse: a test (or a module's ``pytestmark``) asks for the ``fake`` fixture.

``fake`` is a :class:`~tests.fakes.Cloud` registered as provider "fakecloud" (through the
``fake_cloud`` fixture of tests/conftest.py): the provider adapter (:class:`~tests.fakes.FakeCloud`,
built fresh by the registry on every ``get_provider``) reads and writes it. On top of that it owns
a fake clock. ``fake.waits`` (a :class:`sessions.waits.Waits`) is what tests pass to provisioning
and teardown: its sleep advances frozen time (``timezone.now``, via time-machine) and the monotonic
clock the teardown budget uses, so every wait is instant and deterministic, and its SSH checks go to
:meth:`Cloud.ssh_run` / :meth:`Cloud.ssh_banner`, which accept a login only when the private key
matches a public key installed on the instance at that host and port. The fake is the task queue
too (``SHOPPER_TASK_QUEUE``): it records what was enqueued and, with ``fake.run_tasks``, runs it
with its waits.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine

from sessions import keys, services
from sessions.models import Rental, RentalEvent, Status
from tests.factories import RentalFactory

START = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def fake(fake_cloud, settings, db):
    cloud = fake_cloud()
    settings.SHOPPER_POLL_INTERVAL_SECONDS = 5
    settings.SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS = 10
    settings.SHOPPER_LABEL_LOOKUPS_AFTER_ERROR = 3
    settings.SHOPPER_HARD_MAX_HOURS = 12
    settings.SHOPPER_MAX_LIVE_RENTALS = 20
    settings.SHOPPER_PRICE_MARKUP_PERCENT = Decimal("0")
    settings.SHOPPER_BOOT_TIMEOUT_SECONDS = 900
    settings.SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS = 600
    settings.SHOPPER_CREATE_SETTLE_SECONDS = 120
    settings.SHOPPER_TEARDOWN_BUDGET_SECONDS = 600
    settings.SHOPPER_DESTROY_MAX_BACKOFF_SECONDS = 60
    with time_machine.travel(START, tick=False) as traveller:
        cloud.traveller = traveller
        settings.SHOPPER_TASK_QUEUE = cloud.enqueue
        yield cloud


@pytest.fixture
def offer(fake, make_offer):
    """An Offer row and the same offer at the fake provider, at $1.5000/h for 2 GPUs."""
    fake.add_offer("fc-1", "1.5000", gpu_count=2)
    return make_offer(provider="fakecloud", provider_offer_id="fc-1", price_per_hour="1.5000", gpu_count=2)


@pytest.fixture
def make_rental(fake, offer, user):
    """A Rental row of ``offer`` written directly in any status (for state-machine tests)."""

    def make(status: str = Status.PENDING, consumer=None, **kw) -> Rental:
        return RentalFactory(consumer=consumer or user, offer=offer, status=status, **kw)

    return make


@pytest.fixture
def rent(fake, offer, user):
    """Rent ``offer`` through rental_create with a generated key; returns the RentalCreated."""

    def do(**kw):
        args = dict(user=user, offer_id=offer.pk, reservation_hours=2)
        args.update(kw)
        return services.rental_create(**args)

    return do


def transitions(rental: Rental) -> list[tuple[str, str]]:
    return [
        (e.from_status, e.to_status)
        for e in RentalEvent.objects.filter(rental_id=rental.pk, kind="transition").order_by("at", "id")
    ]


def events(rental: Rental, kind: str) -> list[RentalEvent]:
    return list(RentalEvent.objects.filter(rental_id=rental.pk, kind=kind).order_by("at", "id"))


def fresh(rental: Rental) -> Rental:
    return Rental.objects.get(pk=rental.pk)


def new_public_key(comment: str = "me@laptop") -> str:
    return keys.keypair_generate(comment)[0]
