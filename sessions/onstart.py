"""What a rented machine runs at start-up: the user's command and the node agent.

The start-up script is the file ``sessions/onstart.sh`` (checked by shellcheck in the tests). It is
read as is, not through the template engine (bash's ``${#x}`` would open a Django comment), and
no value is put into it: the agent's settings travel in its environment (``agent_env``).
"""

from __future__ import annotations

import functools
import shlex
from pathlib import Path

from django.conf import settings

from sessions.models import Rental

ONSTART_SCRIPT = Path(__file__).with_name("onstart.sh")


def agent_env(rental: Rental, agent_token: str) -> dict[str, str]:
    """The node agent's configuration (shopper/agent.py --help); the token travels only here."""
    return {
        "SHOPPER_URL": settings.SHOPPER_PUBLIC_URL,
        "SHOPPER_RENTAL_ID": str(rental.pk),
        "SHOPPER_AGENT_TOKEN": agent_token,
        "SHOPPER_HARD_DEADLINE": rental.hard_max_at.isoformat(),
        "SHOPPER_HEARTBEAT_SECONDS": str(getattr(settings, "SHOPPER_AGENT_HEARTBEAT_SECONDS", 30)),
        "SHOPPER_UNREACHABLE_SECONDS": str(getattr(settings, "SHOPPER_AGENT_UNREACHABLE_SECONDS", 900)),
    }


def user_startup(script: str) -> str:
    """The preset's and the user's start-up command, run in the background (so a server that
    never returns, or an ``exit``, cannot keep the node agent from starting) without the agent's
    token in its environment; its output goes to ``~/onstart.log``."""
    if not script.strip():
        return ""
    return (
        "# The start-up command chosen at rent time (log: ~/onstart.log)\n"
        f"(unset SHOPPER_AGENT_TOKEN; nohup bash -c {shlex.quote(script)} "
        '>>"${HOME:-/root}/onstart.log" 2>&1 </dev/null &)\n'
    )


def agent_onstart() -> str:
    """The start-up script: Vast ``onstart`` (bash) or TensorDock runcmd ``bash -c '<exports>...'``.

    It runs with ``agent_env`` in its environment. python3 (not curl/wget, which images may lack)
    fetches ``$SHOPPER_URL/agent.py`` into a fresh ``mktemp -d`` directory (under $TMPDIR, else
    $HOME, else /tmp) and starts it in its own session, so it outlives this script, logging to
    ``agent.log`` next to it. No secret here: the token stays in the environment.
    """
    return _onstart_script()


@functools.cache
def _onstart_script() -> str:
    return ONSTART_SCRIPT.read_text()
