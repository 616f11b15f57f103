"""System checks that catch a misconfigured deployment at start-up, not at the first rental."""

from __future__ import annotations

from cryptography.fernet import Fernet
from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def shopper_settings_check(app_configs, **kwargs):
    problems = []
    keys = [k for k in settings.SHOPPER_FERNET_KEYS if k]
    if not keys and not settings.DEBUG:
        problems.append(
            Error(
                "SHOPPER_FERNET_KEYS is not set: generated SSH private keys cannot be encrypted at rest.",
                hint='Generate one: python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"',
                id="shopper.E001",
            )
        )
    for key in keys:
        try:
            Fernet(key.encode())
        except ValueError:
            problems.append(
                Error("A SHOPPER_FERNET_KEYS entry is not a valid Fernet key.", id="shopper.E002")
            )
    if not settings.DEBUG and not settings.ADMINS:
        problems.append(
            Warning(
                "ADMIN_EMAILS is empty: safety alerts (orphans, ghosts, stuck destroys) are not emailed.",
                id="shopper.W001",
            )
        )
    # The agent's unreachable failsafe (shopper/agent.py) must outlast the heartbeat timeout:
    # the shopper forgives its own outages (sessions/uptime.py), so an agent that powered its
    # machine off sooner would destroy exactly what the grace protects.
    if (
        settings.SHOPPER_HEARTBEAT_TIMEOUT_SECONDS
        and settings.SHOPPER_AGENT_UNREACHABLE_SECONDS <= settings.SHOPPER_HEARTBEAT_TIMEOUT_SECONDS
    ):
        problems.append(
            Warning(
                f"SHOPPER_AGENT_UNREACHABLE_SECONDS ({settings.SHOPPER_AGENT_UNREACHABLE_SECONDS}) is "
                "not longer than SHOPPER_HEARTBEAT_TIMEOUT_SECONDS "
                f"({settings.SHOPPER_HEARTBEAT_TIMEOUT_SECONDS}): node agents would power their machines "
                "off during a shopper outage the shopper forgives.",
                hint="Keep the agent failsafe (default 900 s) well above the heartbeat timeout (300 s).",
                id="shopper.W012",
            )
        )
    return problems
