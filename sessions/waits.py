"""How provisioning and teardown wait and reach the machine: the clock, the sleep and the SSH check.

Production uses ``Waits()``; tests pass a :class:`Waits` of fakes (an instant sleep that moves a
frozen clock, an SSH check against the fake cloud) instead of patching module globals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sessions import ssh
from sessions.lease import Lease


def _sleep(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


@dataclass(frozen=True)
class Waits:
    sleep: Callable[[float], None] = _sleep
    monotonic: Callable[[], float] = time.monotonic
    ssh_run: Callable[..., str] = ssh.ssh_run
    ssh_banner: Callable[..., str] = ssh.ssh_banner

    def wait(self, lease: Lease | None, seconds: float) -> None:
        """A wait inside provisioning or teardown: renew the lease first, so the work stays ours."""
        if lease is not None:
            lease.renew()
        self.sleep(seconds)


PRODUCTION = Waits()
