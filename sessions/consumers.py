"""The websocket behind live updates: ``/ws/rentals/[?rental=<uuid>][&since=<event id>]``.

Permission is group membership: a socket joins only the groups of what its user may see (the
same owner/staff rule as the pages), and the relay in :mod:`sessions.live` sends to groups.
Close codes: 4401 not logged in, 4404 no such rental for this user (as the page's 404).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from sessions import live

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class RentalConsumer(AsyncWebsocketConsumer):
    joined: list[str]

    async def connect(self) -> None:
        self.joined = []
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        rental = None
        if rental_id := (query.get("rental") or [""])[0]:
            rental = await database_sync_to_async(live.visible_rental)(user, rental_id)
            if rental is None:
                await self.close(code=CLOSE_NOT_FOUND)
                return
        try:
            since = int((query.get("since") or [""])[0])
        except ValueError:
            since = None

        names = [live.user_group(user.pk)]
        if user.is_staff:
            names.append(live.STAFF_GROUP)
        if rental is not None:
            names.append(live.rental_group(rental.pk, owner_view=rental.consumer_id == user.pk))
        self.relay = live.get_relay()
        # Join (and start the relay) before the catch-up query, so no event falls in between.
        await self.relay.join(self.channel_layer, self.channel_name, names)
        self.joined = names
        await self.accept()
        latest, text = await database_sync_to_async(live.catch_up)(user, rental, since)
        if text is not None:
            await self.send(text_data=text)
        await self.send(text_data=f'{{"type": "hello", "event": {latest}}}')

    async def disconnect(self, code) -> None:
        if self.joined:
            await self.relay.leave(self.channel_layer, self.channel_name, self.joined)
            self.joined = []

    async def receive(self, text_data=None, bytes_data=None) -> None:
        """The browser has nothing to say; ignore anything it sends."""

    async def rental_changed(self, event: dict) -> None:
        await self.send(text_data=event["text"])
