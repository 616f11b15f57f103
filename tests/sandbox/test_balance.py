"""The sandbox answers Vast's account endpoint (FIELD_NOTES X-BALANCE) and the adapter reads it."""

from __future__ import annotations

from decimal import Decimal

import pytest
import requests

from inventory.providers.base import AuthFailed, CreateRequest, InsufficientFunds, ProviderError
from inventory.providers.vastai import VastAI


@pytest.fixture
def vast(sandbox):
    yield VastAI(base_url=sandbox.vastai_url, api_key="sandbox", timeout=10, min_interval=0)
    sandbox.set_balance(100_000.0)  # the shared sandbox's default again


def test_users_current_has_vast_shape_and_the_adapter_reads_credit(sandbox, vast):
    sandbox.set_balance(12.5)
    body = requests.get(
        f"{sandbox.vastai_url}/api/v0/users/current/", headers={"Authorization": "Bearer k"}, timeout=10
    ).json()
    assert body["credit"] == 12.5 and body["balance"] == 12.5 and body["can_pay"] is True
    assert vast.account_balance() == Decimal("12.5")


def test_an_empty_account_refuses_creates(sandbox, vast):
    sandbox.set_balance(0)
    assert vast.account_balance() == Decimal("0")
    ask = requests.post(f"{sandbox.vastai_url}/api/v0/bundles/", json={}, timeout=10).json()["offers"][0]
    with pytest.raises(InsufficientFunds):
        vast.create_instance(
            CreateRequest(offer_id=str(ask["id"]), label="shopper-x", ssh_public_key="", disk_gb=10)
        )


def test_a_bad_key_or_a_bad_admin_body(sandbox):
    bad = VastAI(base_url=sandbox.vastai_url, api_key="invalid", timeout=10, min_interval=0)
    with pytest.raises((AuthFailed, ProviderError)):
        bad.account_balance()
    r = requests.put(f"{sandbox.url}/_sandbox/balance", json={"vastai": "lots"}, timeout=10)
    assert r.status_code == 400
