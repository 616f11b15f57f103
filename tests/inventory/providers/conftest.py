"""Shared fixtures for the provider adapter tests. No database, no network, no real sleeping."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from inventory.providers import base

# Each provider keeps its recorded bodies in its own folder: inventory/providers/<folder>/fixtures/.
PROVIDERS_DIR = Path(__file__).resolve().parents[3] / "inventory" / "providers"
API_KEY = "sk-TEST-0123456789abcdef-SECRET"  # must never show up in an error message
VAST_URL = "https://console.vast.ai"
TD_URL = "https://dashboard.tensordock.com/api/v2"


def fixture_path(name: str) -> Path:
    """The one provider fixture called ``name`` (file names are unique across providers)."""
    found = sorted(PROVIDERS_DIR.glob(f"*/fixtures/{name}"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one inventory/providers/*/fixtures/{name}, found {len(found)}")
    return found[0]


def load(name: str) -> Any:
    return json.loads(fixture_path(name).read_text())


def add_variant(rsps: responses.RequestsMock, method: str, url: str, variant: dict[str, Any], **kw: Any):
    """Register one fixture variant ({"status", "body" | "text", "headers"?, "content_type"?})."""
    if "text" in variant:
        return rsps.add(
            method,
            url,
            body=variant["text"],
            status=variant["status"],
            content_type=variant.get("content_type", "text/plain"),
            headers=variant.get("headers"),
            **kw,
        )
    return rsps.add(
        method, url, json=variant.get("body"), status=variant["status"], headers=variant.get("headers"), **kw
    )


class FakeLimiter:
    """Records the limiter protocol instead of waiting."""

    def __init__(self) -> None:
        self.waits = 0
        self.penalties: list[float | None] = []
        self.relaxed = 0

    def wait(self) -> None:
        self.waits += 1

    def penalize(self, retry_after: float | None = None) -> float:
        self.penalties.append(retry_after)
        return retry_after if retry_after is not None else 0.5 * len(self.penalties)

    def relax(self) -> None:
        self.relaxed += 1


class RecordingSession(requests.Session):
    """A real Session (so ``responses`` intercepts it) that remembers each call's kwargs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        self.calls.append({"method": method, "url": url, **kwargs})
        return super().request(method, url, *args, **kwargs)


@pytest.fixture(autouse=True)
def no_real_sleep(monkeypatch):
    """base.RateLimiter sleeps through ``base.time``; make any such sleep recorded, not real."""
    slept: list[float] = []
    fake_time = types.SimpleNamespace(monotonic=base.time.monotonic, sleep=slept.append)
    monkeypatch.setattr(base, "time", fake_time)
    return slept


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def _make(cls, url: str):
    session = RecordingSession()
    provider = cls(base_url=url, api_key=API_KEY, timeout=12.5, session=session)
    provider.limiter = FakeLimiter()
    return provider


def _assert_call_hygiene(provider) -> None:
    # Every call, in every test, carried the explicit timeout, and the key only rode in the header.
    for call in provider.session.calls:
        assert call.get("timeout") == provider.timeout, call
        assert API_KEY not in call["url"] and API_KEY not in repr(call.get("params")), call
        assert call["headers"]["Authorization"] == f"Bearer {API_KEY}"


@pytest.fixture
def vast():
    from inventory.providers.vastai import VastAI

    provider = _make(VastAI, VAST_URL)
    yield provider
    _assert_call_hygiene(provider)


@pytest.fixture
def td():
    from inventory.providers.tensordock import TensorDock

    provider = _make(TensorDock, TD_URL)
    yield provider
    _assert_call_hygiene(provider)
