"""Since when the shopper has been able to hear its node agents: the grace after our own silence.

A heartbeat can only be missed for a reason on the node's side if the shopper was there to hear
it. So the heartbeat timeout counts from the later of the agent's last heartbeat (or
``active_since``) and the start of the current *up stretch*: the time since which both sides of
the shopper have been up without a gap —

- ``web``: every web process (``shopper.serve`` children) touches its row every quarter gap from
  a small thread, however idle it is, so "web up" means "a process able to take a heartbeat and
  write it to the database was running";
- ``safety``: every pass of ``lifecycle_enforce`` (the safety loop, every 5 s) touches its row.

A touch more than ``SHOPPER_UPTIME_GAP_SECONDS`` (60 s) after the previous one starts a new
stretch: an outage, an upgrade, a stop of the whole stack, a database that could not be written.
A shorter restart loses at most one or two heartbeats of 30 s and changes nothing. While the web
row is stale the shopper cannot hear anyone, so no heartbeat counts as missed at all. A safety
pass slower than the gap (a provider hanging during reconciliation) looks like an outage too: it
only gives agents another grace, it never stops one sooner.

Everything is in the database (``UpStretch`` rows), never in one process's memory: the web
processes, the safety loop and their restarts all agree on one stretch.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Case, F, Value, When
from django.utils import timezone

from sessions.models import UpStretch

log = logging.getLogger(__name__)
WEB, SAFETY = "web", "safety"


def _gap() -> timedelta:
    return timedelta(seconds=settings.SHOPPER_UPTIME_GAP_SECONDS)


def uptime_touch(role: str, now: datetime | None = None) -> None:
    """Record that ``role`` is up now; a gap longer than the allowed one starts a new stretch.

    One UPDATE, so concurrent touches of several processes never lose a stretch start (the CASE
    reads the previous ``seen_at``)."""
    now = now or timezone.now()
    updated = UpStretch.objects.filter(role=role).update(
        since=Case(When(seen_at__lt=now - _gap(), then=Value(now)), default=F("since")),
        seen_at=now,
    )
    if not updated:
        UpStretch.objects.get_or_create(role=role, defaults={"since": now, "seen_at": now})


def up_stretch_start(now: datetime | None = None) -> datetime | None:
    """Start of the current stretch in which web and safety loop were both up, or None while the
    web side is down (nobody can hear a heartbeat then). Without any web record at all (a web
    server not started through ``shopper.serve``) the safety loop's stretch alone counts."""
    now = now or timezone.now()
    rows = {row.role: row for row in UpStretch.objects.filter(role__in=(WEB, SAFETY))}
    web, safety = rows.get(WEB), rows.get(SAFETY)
    if web is not None and web.seen_at < now - _gap():
        return None
    starts = [row.since for row in (web, safety) if row is not None]
    return max(starts) if starts else now


def web_beat_forever(stop: threading.Event) -> None:
    """The web process's touch, every quarter gap, until ``stop`` is set.

    The connection is handed back after every touch: on PostgreSQL it is borrowed from the
    process's bounded pool (shopper/settings.py), which a thread holding one forever would shrink.
    """
    interval = max(1.0, settings.SHOPPER_UPTIME_GAP_SECONDS / 4)
    while True:
        try:
            uptime_touch(WEB)
        except Exception:  # a database that is down: the gap it leaves is the record of it
            log.warning("web up-stretch touch failed; retrying", exc_info=True)
        finally:
            if not connection.in_atomic_block:  # (a test calling this runs inside a transaction)
                connection.close()
        if stop.wait(interval):
            return


def start_web_beat() -> threading.Event:
    """Start the touch thread of this web process (once); returns the event that stops it."""
    stop = threading.Event()
    threading.Thread(target=web_beat_forever, args=(stop,), name="uptime-web", daemon=True).start()
    return stop
