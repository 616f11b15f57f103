"""Live updates: relay new RentalEvents (the outbox) to the browsers connected to *this* process.

The worker and the safety loop are separate processes that only write RentalEvent rows. Every web
process runs one :class:`Relay` (an asyncio task, started by the first websocket that connects and
ended when the last one leaves). Every ``POLL_SECONDS`` it reads the events it has not seen, renders
the status and timeline fragments of each changed rental once per view (owner / staff) with the
same templates the page uses, and ``group_send``s them to the consumers of this process.

Group names carry a per-process token, so the scheme is correct with any channel layer: with the
in-memory layer (SQLite, no Redis) groups are process-local anyway, and with Redis a browser still
gets one copy, from the relay of the process it is connected to, instead of one per web process.

Groups (before the process prefix):

* ``rental-<pk>``        owners watching the rental's page: status + timeline + machine fragments
* ``rental-<pk>.staff``  staff watching someone else's rental (no private-key link)
* ``user-<id>``          every socket of that user: a bare "rental changed" notice (list page)
* ``staff``              every staff socket: the same notice for every rental

Messages to the browser are JSON: ``{"type": "rental.changed", "rental": "<uuid>", "event": <id>,
"html": "<oob fragments or empty>"}`` and, once per connect, ``{"type": "hello", "event": <id>}``.
``event`` is the newest event id the message reflects; the page sends it back as ``?since=`` when
it reconnects, and the consumer then sends the current state if anything newer happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import weakref
from collections import Counter
from types import SimpleNamespace

from channels.db import database_sync_to_async
from django.db.models import Max
from django.template.loader import render_to_string

from sessions.models import Rental, RentalEvent

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
# Ids are allocated before commit, so on PostgreSQL a lower id can become visible after a higher
# one. Ids seen less than this long ago are still remembered, and anything above the oldest of
# them is read again, so a late commit is relayed instead of skipped.
REORDER_WINDOW_SECONDS = 5.0
ERROR_BACKOFF_SECONDS = 2.0
STATUS = "sessions/rental_detail.html#rental-status"
TIMELINE = "sessions/rental_detail.html#rental-timeline"
MACHINE = "sessions/rental_detail.html#rental-machine"
PROCESS_TOKEN = uuid.uuid4().hex[:12]


def group(name: str) -> str:
    """The channel-layer group of this process for a logical group name."""
    return f"live.{PROCESS_TOKEN}.{name}"


def rental_group(rental_id, *, owner_view: bool) -> str:
    return f"rental-{rental_id}" if owner_view else f"rental-{rental_id}.staff"


def user_group(user_id) -> str:
    return f"user-{user_id}"


STAFF_GROUP = "staff"


# --------------------------------------------------------------------------------------------
# Rendering (sync: call through database_sync_to_async)
# --------------------------------------------------------------------------------------------
def render_rental(rental: Rental, *, owner_view: bool) -> str:
    """The status, timeline and machine fragments, out of band, exactly as the page renders them."""
    from sessions.views import _detail_context  # the page's context, so push == poll == page

    viewer = SimpleNamespace(user=SimpleNamespace(pk=rental.consumer_id if owner_view else None))
    context = _detail_context(viewer, rental, oob=True)
    # No request: the forms' {% csrf_token %} is empty; htmx posts them with the X-CSRFToken
    # header from <body hx-headers>, and live.js puts the hidden input back for plain submits.
    return "".join(render_to_string(name, context) for name in (STATUS, TIMELINE, MACHINE))


def message(rental_id, event_id: int, html: str = "") -> str:
    return json.dumps({"type": "rental.changed", "rental": str(rental_id), "event": event_id, "html": html})


def max_event_id() -> int:
    return RentalEvent.objects.aggregate(m=Max("id"))["m"] or 0


def visible_rental(user, rental_id) -> Rental | None:
    """The rental if ``user`` may see it, as on the pages: owner, or any rental for staff."""
    try:
        uuid.UUID(str(rental_id))
    except ValueError:
        return None
    return Rental.objects.for_user(user).filter(pk=rental_id).first()


def catch_up(user, rental: Rental | None, since: int | None) -> tuple[int, str | None]:
    """(newest event id this socket cares about, the message to send now or None).

    Called after the socket joined its groups, so anything newer than the id returned here is
    relayed; anything older and newer than ``since`` is covered by the message returned.
    """
    events = RentalEvent.objects.all()
    if rental is not None:
        events = events.filter(rental_id=rental.pk)
    elif not user.is_staff:
        events = events.filter(rental__consumer_id=user.pk)
    latest = events.aggregate(m=Max("id"))["m"] or 0
    if since is None or latest <= since:
        return latest, None
    if rental is None:
        return latest, message("", latest)
    fresh = Rental.objects.select_related("consumer").get(pk=rental.pk)
    return latest, message(rental.pk, latest, render_rental(fresh, owner_view=rental.consumer_id == user.pk))


# --------------------------------------------------------------------------------------------
# The relay
# --------------------------------------------------------------------------------------------
class Relay:
    """One per event loop (one per web process under Daphne)."""

    def __init__(self) -> None:
        self.watchers: Counter[str] = Counter()  # logical group -> sockets of this process in it
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._floor = 0  # every event id <= floor has been handled (or given up on)
        self._seen: dict[int, float] = {}  # ids above the floor already relayed -> when
        self.delivered = 0  # messages sent, for tests and the benchmark

    # -- membership ---------------------------------------------------------------------------
    async def join(self, layer, channel_name: str, names: list[str]) -> None:
        for name in names:
            await layer.group_add(group(name), channel_name)
        self.watchers.update(names)
        await self._ensure_running()

    async def leave(self, layer, channel_name: str, names: list[str]) -> None:
        for name in names:
            await layer.group_discard(group(name), channel_name)
        self.watchers.subtract(names)
        self.watchers += Counter()  # drop zero counts

    async def _ensure_running(self) -> None:
        async with self._lock:
            if self._task is not None and not self._task.done():
                return
            # Start from the current max, before the caller's catch-up query: nothing falls between.
            self._floor = await database_sync_to_async(max_event_id)()
            self._seen.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="live-relay")

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the loop -----------------------------------------------------------------------------
    async def _run(self) -> None:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        while self.watchers:
            await asyncio.sleep(POLL_SECONDS)
            if not self.watchers:
                break
            try:
                out = await database_sync_to_async(self.poll)(set(self.watchers))
                for name, text in out:
                    await layer.group_send(group(name), {"type": "rental.changed", "text": text})
                    self.delivered += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("live relay: poll failed; retrying")
                await asyncio.sleep(ERROR_BACKOFF_SECONDS)

    def poll(self, watched: set[str]) -> list[tuple[str, str]]:
        """Read new events; return (logical group, JSON text) pairs, oldest event first."""
        now = time.monotonic()
        rows = RentalEvent.objects.filter(id__gt=self._floor).order_by("id")
        rows = rows.values_list("id", "rental_id", "rental__consumer_id")
        changed: dict = {}  # rental id -> (newest new event id, consumer id), in event order
        for event_id, rental_id, consumer_id in rows:
            if event_id in self._seen:
                continue
            self._seen[event_id] = now
            changed.pop(rental_id, None)
            changed[rental_id] = (event_id, consumer_id)
        # Forget ids older than the window and raise the floor over them.
        old = [i for i, t in self._seen.items() if now - t > REORDER_WINDOW_SECONDS]
        if old:
            self._floor = max(self._floor, max(old))
            self._seen = {i: t for i, t in self._seen.items() if i > self._floor}
        if not changed:
            return []

        def watches(rental_id) -> bool:
            return bool({rental_group(rental_id, owner_view=v) for v in (True, False)} & watched)

        rentals = Rental.objects.select_related("consumer").in_bulk([r for r in changed if watches(r)])
        out: list[tuple[int, str, str]] = []
        for rental_id, (event_id, consumer_id) in changed.items():
            if (rental := rentals.get(rental_id)) is not None:
                for owner_view in (True, False):
                    if (name := rental_group(rental_id, owner_view=owner_view)) in watched:
                        html = render_rental(rental, owner_view=owner_view)
                        out.append((event_id, name, message(rental_id, event_id, html)))
            notice = message(rental_id, event_id)
            out.extend(
                (event_id, name, notice) for name in (user_group(consumer_id), STAFF_GROUP) if name in watched
            )
        # Event order, so a page that saw a message's ``event`` also saw every earlier one.
        out.sort(key=lambda item: item[0])
        return [(name, text) for _, name, text in out]


_relays: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Relay] = weakref.WeakKeyDictionary()


def get_relay() -> Relay:
    """The relay of the running event loop (Daphne: one per process; tests: one per loop)."""
    loop = asyncio.get_running_loop()
    relay = _relays.get(loop)
    if relay is None:
        relay = _relays[loop] = Relay()
    return relay
