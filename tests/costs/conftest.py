"""Fixtures of the costs tests: rentals written directly at any time, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from sessions.models import Rental, Status
from tests.sessions.conftest import fake  # noqa: F401  (the scriptable cloud, for rental_create)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def billed(db, user):
    """billed(active_since, ended_at=None, price="1.0000", ...) -> a Rental that is (or was) billing."""

    def make(active_since: datetime, ended_at: datetime | None = None, *, consumer=None, **kw) -> Rental:
        price = Decimal(str(kw.pop("price", "1.0000")))
        status = kw.pop("status", Status.DESTROYED if ended_at else Status.ACTIVE)
        fields = dict(
            consumer=consumer or user,
            provider="vastai",
            provider_offer_id="o-1",
            gpu_type="RTX 4090 24GB",
            gpu_count=1,
            price_per_hour=price,
            markup_percent=Decimal("0"),
            status=status,
            created_at=active_since - timedelta(minutes=3),
            active_since=active_since,
            ended_at=ended_at,
            reservation_ends_at=active_since + timedelta(hours=2),
            hard_max_at=active_since + timedelta(hours=12),
        )
        fields.update(kw)
        return Rental.objects.create(**fields)

    return make


@pytest.fixture
def staff_client(staff):
    from rest_framework.test import APIClient

    from shopper.models import ApiToken

    _, raw = ApiToken.issue(user=staff, name="tests")
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return c
