"""Fixtures of the whole suite: the three users, API clients, offers, the fake provider, queued tasks.

Rows are built with the factories of tests/factories.py; the scriptable fake provider lives in
tests/fakes.py.
"""

from __future__ import annotations

import itertools

import pytest
from rest_framework.test import APIClient

from shopper.models import ApiToken
from tests import fakes
from tests.factories import OfferFactory, UserFactory


@pytest.fixture
def user(db):
    return UserFactory(username="alice")  # password pw-alice-123


@pytest.fixture
def other_user(db):
    return UserFactory(username="bob")


@pytest.fixture
def staff(db):
    return UserFactory(username="carol", is_staff=True)


@pytest.fixture
def client_logged_in(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def token_client(db):
    """token_client(user, name="tests") -> an APIClient sending a fresh API token of ``user``."""

    def make(user, name: str = "tests") -> APIClient:
        _, raw = ApiToken.issue(user=user, name=name)
        c = APIClient()
        c.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
        return c

    return make


@pytest.fixture
def api_client(user, token_client):
    return token_client(user)


@pytest.fixture
def make_offer(db):
    """make_offer(**fields) -> an Offer (tests.factories.OfferFactory); ids offer-1, offer-2, … per test."""
    ids = itertools.count(1)

    def make(**kw):
        kw.setdefault("provider_offer_id", f"offer-{next(ids)}")
        return OfferFactory(**kw)

    return make


@pytest.fixture
def fake_cloud(settings):
    """fake_cloud(name="fakecloud", display_name="Fake Cloud") -> the :class:`tests.fakes.Cloud`
    behind a fake provider registered (and enabled) under ``name`` until the test ends."""

    def install(name: str = "fakecloud", display_name: str = "Fake Cloud") -> fakes.Cloud:
        setattr(settings, f"{name.upper()}_API_KEY", "k")
        return fakes.install(name, display_name)

    yield install
    fakes.uninstall()


@pytest.fixture
def enqueued(settings) -> list:
    """The background tasks the code under test enqueued, as (function path, *args); none run."""
    calls: list = []
    settings.SHOPPER_TASK_QUEUE = lambda func, *args: calls.append((func, *args))
    return calls


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import caches

    from inventory.menu import holder

    for name in ("default", "local"):
        caches[name].clear()
    holder.reset()  # this process's in-memory offer menu: each test builds its own
    yield
    for name in ("default", "local"):
        caches[name].clear()


def pytest_collection_modifyitems(config, items):
    """Start the end-to-end tests first. They spend minutes waiting on real processes (boots,
    deadlines, outages); handed out first, their waits overlap the rest of the suite instead of
    running one after another at the end (pytest-xdist hands tests out in collection order)."""
    longest = ("test_chaos.py", "test_stalled_queue.py", "test_two_deployments.py", "test_safety_leader.py")

    def order(item) -> tuple[bool, bool]:
        return item.get_closest_marker("e2e") is None, not item.nodeid.split("::")[0].endswith(longest)

    items.sort(key=order)
