from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from shopper.models import ApiToken


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.com", "pw-alice-123")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob", "bob@example.com", "pw-bob-123")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("carol", "carol@example.com", "pw-carol-123", is_staff=True)


@pytest.fixture
def client_logged_in(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def api_client(user):
    _, raw = ApiToken.issue(user=user, name="tests")
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return c


@pytest.fixture
def make_offer(db):
    from inventory.models import Offer

    counter = {"n": 0}

    def make(**kw) -> Offer:
        counter["n"] += 1
        price = Decimal(str(kw.pop("price_per_hour", "1.0000")))
        count = kw.pop("gpu_count", 1)
        defaults = dict(
            provider="vastai",
            provider_offer_id=f"offer-{counter['n']}",
            gpu_type="RTX 4090 24GB",
            vram_gb=24,
            location="Oregon, US",
            reliability=Decimal("0.9900"),
            fetched_at=timezone.now(),
        )
        defaults.update(kw)
        return Offer.objects.create(
            gpu_count=count, price_per_hour=price, price_per_gpu_hour=Offer.per_gpu(price, count), **defaults
        )

    return make


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()
