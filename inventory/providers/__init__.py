"""Provider registry: which adapters exist, their settings, and which are enabled.

A provider is one folder, ``inventory/providers/<folder>/``: ``adapter.py`` (the client),
``names.py`` (its GPU names -> canonical ``gpu_type``), ``fixtures/`` (recorded bodies for its
tests) and, when the sandbox cloud speaks it, ``sandbox.py`` (the dialect, with its URL ``PREFIX``).
Its ``__init__.py`` exports the adapter class. Adding a provider is that folder plus one line
in ``PROVIDERS`` below; tests/inventory/providers/test_layout.py keeps the rule.

Adapter classes are named by dotted path and imported lazily, so importing this package costs
nothing and tests can register a fake adapter with ``register_provider``. Django settings are
read inside the functions: the sandbox cloud imports this package (for ``PROVIDERS``) and never
imports Django.

Settings (django.conf.settings, all optional): ``VASTAI_API_URL``, ``VASTAI_API_KEY``,
``TENSORDOCK_API_URL``, ``TENSORDOCK_API_TOKEN``, ``RUNPOD_API_URL``, ``RUNPOD_API_KEY``,
``LAMBDA_API_URL``, ``LAMBDA_API_KEY``,
``PROVIDER_TIMEOUT_SECONDS``. A provider without
a key is disabled, not an error.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .base import Provider
from .ratelimit import shared_limiter


class Registration(NamedTuple):
    """One built-in provider: its package (folder), the class it exports, and its settings."""

    package: str
    class_name: str
    url_setting: str
    key_setting: str
    default_url: str


# One line per provider: name -> (package, adapter class, url setting, key setting, default url).
PROVIDERS: dict[str, Registration] = {
    "vastai": Registration("inventory.providers.vastai", "VastAI", "VASTAI_API_URL", "VASTAI_API_KEY", "https://console.vast.ai"),
    "tensordock": Registration("inventory.providers.tensordock", "TensorDock", "TENSORDOCK_API_URL", "TENSORDOCK_API_TOKEN", "https://dashboard.tensordock.com/api/v2"),  # noqa: E501
    "runpod": Registration("inventory.providers.runpod", "RunPod", "RUNPOD_API_URL", "RUNPOD_API_KEY", "https://api.runpod.io/v2"),
    "lambda": Registration("inventory.providers.lambdacloud", "LambdaCloud", "LAMBDA_API_URL", "LAMBDA_API_KEY", "https://cloud.lambda.ai/api/v1"),  # noqa: E501
}  # fmt: skip

# Derived, mutable views (``register_provider`` adds fakes here, never to PROVIDERS).
# name -> dotted path of the adapter class; the package re-exports it, so the paths stored before
# the folders existed ("inventory.providers.vastai.VastAI") still resolve.
PROVIDER_CLASSES: dict[str, str] = {name: f"{r.package}.{r.class_name}" for name, r in PROVIDERS.items()}
# name -> (url setting, key setting, default url)
PROVIDER_SETTINGS: dict[str, tuple[str, str, str]] = {
    name: (r.url_setting, r.key_setting, r.default_url) for name, r in PROVIDERS.items()
}
DEFAULT_TIMEOUT_SECONDS = 30.0


class UnknownProvider(KeyError):
    """No adapter is registered under that name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown provider"


class ProviderDisabled(Exception):
    """The provider exists but is not configured (no API key)."""


def register_provider(
    name: str,
    dotted_path: str,
    *,
    url_setting: str | None = None,
    key_setting: str | None = None,
    default_url: str = "",
) -> None:
    """Add (or replace) an adapter; settings default to ``<NAME>_API_URL`` / ``<NAME>_API_KEY``."""
    PROVIDER_CLASSES[name] = dotted_path
    upper = name.upper()
    PROVIDER_SETTINGS[name] = (
        url_setting or f"{upper}_API_URL",
        key_setting or f"{upper}_API_KEY",
        default_url,
    )


def unregister_provider(name: str) -> None:
    PROVIDER_CLASSES.pop(name, None)
    PROVIDER_SETTINGS.pop(name, None)


def provider_class(name: str) -> type[Provider]:
    try:
        path = PROVIDER_CLASSES[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDER_CLASSES))
        raise UnknownProvider(f"unknown provider {name!r} (known: {known})") from None
    from django.utils.module_loading import import_string

    return import_string(path)


def _setting_names(name: str) -> tuple[str, str, str]:
    if name not in PROVIDER_CLASSES:
        provider_class(name)  # raises UnknownProvider
    upper = name.upper()
    return PROVIDER_SETTINGS.get(name, (f"{upper}_API_URL", f"{upper}_API_KEY", ""))


def provider_settings(name: str) -> tuple[str, str]:
    """(base url, api key) for ``name``; the key is "" when unset."""
    from django.conf import settings

    url_setting, key_setting, default_url = _setting_names(name)
    url = getattr(settings, url_setting, None) or default_url
    key = getattr(settings, key_setting, None) or ""
    return str(url).strip(), str(key).strip()


def provider_timeout() -> float:
    from django.conf import settings

    return float(getattr(settings, "PROVIDER_TIMEOUT_SECONDS", None) or DEFAULT_TIMEOUT_SECONDS)


def get_provider(name: str, **kwargs: Any) -> Provider:
    """A configured adapter. Raises UnknownProvider or ProviderDisabled (no key).

    ``kwargs`` go to the constructor (e.g. ``session=`` in tests).
    """
    from django.conf import settings

    cls = provider_class(name)
    url, key = provider_settings(name)
    if not key:
        raise ProviderDisabled(f"{name}: no API key set ({_setting_names(name)[1]})")
    kwargs.setdefault("timeout", provider_timeout())
    # Only ever lowered for the local sandbox in tests; real providers keep their class pacing.
    if getattr(settings, "PROVIDER_MIN_INTERVAL_SECONDS", None) is not None:
        kwargs.setdefault("min_interval", float(settings.PROVIDER_MIN_INTERVAL_SECONDS))
    # Rate limits are per account: every process shares one limiter (FIELD_NOTES VA-RATELIMIT).
    if "limiter" not in kwargs:
        interval = kwargs.get("min_interval", cls.min_interval)
        kwargs["limiter"] = shared_limiter(name, url.rstrip("/"), key, interval)
    return cls(base_url=url, api_key=key, **kwargs)


def provider_statuses() -> list[dict[str, Any]]:
    """One entry per registered provider: name, display_name, enabled, reason (why disabled)."""
    out = []
    for name in PROVIDER_CLASSES:
        cls = provider_class(name)
        _, key = provider_settings(name)
        reason = "" if key else f"no API key set ({_setting_names(name)[1]})"
        out.append(
            {"name": name, "display_name": cls.display_name or name, "enabled": bool(key), "reason": reason}
        )
    return out


def enabled_providers() -> list[Provider]:
    return [get_provider(s["name"]) for s in provider_statuses() if s["enabled"]]
