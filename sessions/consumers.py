"""The websocket behind live updates: ``/ws/rentals/[?rental=<uuid>][&since=<event id>]``.

Permission is group membership: a socket joins only the groups of what its user may see (the
same owner/staff rule as the pages), and the relay in :mod:`sessions.live` sends to groups.
Close codes: 4401 not logged in, 4404 no such rental for this user (as the page's 404).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from sessions import live

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_key(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin, the port made explicit; None if it is not one."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number, or out of range
        return None
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return scheme, parts.hostname.lower(), port


def _secure(scope, headers: dict[bytes, str]) -> bool:
    """As Django's ``request.is_secure()``: wss, or the TLS proxy's header (SECURE_PROXY_SSL_HEADER)."""
    if scope.get("scheme") == "wss":
        return True
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if not proxy:
        return False
    name, value = proxy
    name = name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin-1")
    return headers.get(name, "").split(",")[0].strip() == value


def origin_allowed(scope) -> bool:
    """Whether a websocket's Origin is this site: the same scheme, host and port as the request
    itself (its Host header, which must be in ALLOWED_HOSTS), or one of CSRF_TRUSTED_ORIGINS —
    the rule Django's CSRF check applies to a form post. Channels' AllowedHostsOriginValidator
    compared the host only, so a page on another port of an allowed host could connect."""
    headers = {name.lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
    origin = origin_key(headers.get(b"origin", ""))
    if origin is None:
        return False
    if origin in {origin_key(trusted) for trusted in settings.CSRF_TRUSTED_ORIGINS}:
        return True
    host = headers.get(b"host", "")
    domain = split_domain_port(host)[0]
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:  # as Django's HttpRequest.get_host()
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed):
        return False
    scheme = "https" if _secure(scope, headers) else "http"
    return origin == origin_key(f"{scheme}://{host}")


class SameOriginValidator:
    """ASGI middleware: refuse (close before accepting) a websocket from another origin."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


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
