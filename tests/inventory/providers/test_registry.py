"""The provider registry: settings, enabled/disabled, lazy classes. No database needed.

Uses django.test.override_settings so it runs with pytest-django (shopper.settings) and also
under ``-p no:django``, where minimal settings are configured here.
"""

from __future__ import annotations

import os

import pytest
from django.conf import settings
from django.test import override_settings

if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
    settings.configure()

import inventory.providers as registry
from inventory.providers import (
    ProviderDisabled,
    UnknownProvider,
    enabled_providers,
    get_provider,
    provider_settings,
    provider_statuses,
)
from inventory.providers.base import Provider
from inventory.providers.tensordock import TensorDock
from inventory.providers.vastai import VastAI

NO_KEYS = dict(VASTAI_API_KEY="", TENSORDOCK_API_TOKEN="", RUNPOD_API_KEY="", LAMBDA_API_KEY="")


class FakeCloud(Provider):
    name = "fakecloud"
    display_name = "Fake Cloud"


def test_registry_names_dotted_paths():
    assert registry.PROVIDER_CLASSES["vastai"] == "inventory.providers.vastai.VastAI"
    assert registry.PROVIDER_CLASSES["tensordock"] == "inventory.providers.tensordock.TensorDock"


@override_settings(**NO_KEYS)
def test_no_keys_means_disabled_with_reason():
    statuses = {s["name"]: s for s in provider_statuses()}
    assert statuses["vastai"] == {
        "name": "vastai",
        "display_name": "Vast.ai",
        "enabled": False,
        "reason": "no API key set (VASTAI_API_KEY)",
    }
    assert statuses["tensordock"]["enabled"] is False
    assert statuses["tensordock"]["reason"] == "no API key set (TENSORDOCK_API_TOKEN)"
    assert enabled_providers() == []
    with pytest.raises(ProviderDisabled, match="VASTAI_API_KEY"):
        get_provider("vastai")


@override_settings(
    VASTAI_API_KEY="vk", TENSORDOCK_API_TOKEN="tk", LAMBDA_API_KEY="lk", PROVIDER_TIMEOUT_SECONDS=12
)
def test_both_keys_enable_both():
    both = [s for s in provider_statuses() if s["name"] in ("vastai", "tensordock")]
    assert len(both) == 2 and all(s["enabled"] and s["reason"] == "" for s in both)
    providers = {p.name: p for p in enabled_providers()}
    assert isinstance(providers["vastai"], VastAI) and isinstance(providers["tensordock"], TensorDock)
    assert providers["vastai"].api_key == "vk" and providers["vastai"].timeout == 12.0
    assert providers["tensordock"].base_url == "https://dashboard.tensordock.com/api/v2"
    assert providers["lambda"].base_url == "https://cloud.lambda.ai/api/v1"  # every key: every provider


@override_settings(VASTAI_API_KEY="  vk \n", VASTAI_API_URL="https://cloud.vast.ai/")
def test_settings_are_read_and_trimmed():
    assert provider_settings("vastai") == ("https://cloud.vast.ai/", "vk")
    assert get_provider("vastai").base_url == "https://cloud.vast.ai"


def test_defaults_when_settings_are_absent():
    with override_settings():
        for name in ("VASTAI_API_URL", "VASTAI_API_KEY", "PROVIDER_TIMEOUT_SECONDS"):
            if hasattr(settings, name):
                delattr(settings, name)
        assert provider_settings("vastai") == ("https://console.vast.ai", "")
        assert registry.provider_timeout() == 30.0


def test_unknown_provider_is_a_clear_key_error():
    with pytest.raises(KeyError) as exc:
        get_provider("nosuchcloud")
    assert isinstance(exc.value, UnknownProvider)
    assert "unknown provider 'nosuchcloud'" in str(exc.value)


@override_settings(FAKECLOUD_API_KEY="fk", FAKECLOUD_API_URL="https://fake.test", **NO_KEYS)
def test_register_provider_for_tests():
    registry.register_provider("fakecloud", f"{__name__}.FakeCloud")
    try:
        statuses = {s["name"]: s for s in provider_statuses()}
        assert statuses["fakecloud"]["enabled"] and statuses["fakecloud"]["display_name"] == "Fake Cloud"
        [only] = enabled_providers()
        assert isinstance(only, FakeCloud) and only.base_url == "https://fake.test"
    finally:
        registry.unregister_provider("fakecloud")
    assert "fakecloud" not in registry.PROVIDER_CLASSES
