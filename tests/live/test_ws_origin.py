"""The websocket accepts only this site's own origin: scheme, host and port (issue 12: the host
alone was compared, so a page on another port of an allowed host could open a socket with the
user's cookie). Through the real ASGI application (shopper.asgi)."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import Client

from sessions import live
from sessions.consumers import origin_allowed, origin_key
from shopper.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def connect(cookie: str, origin: str | None, host: str = "testserver", **extra) -> tuple[bool, object]:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    headers.append((b"cookie", f"sessionid={cookie}".encode()))
    headers += [(name.encode(), value.encode()) for name, value in extra.items()]

    async def run():
        comm = WebsocketCommunicator(application, "/ws/rentals/", headers=headers)
        connected, code = await comm.connect(timeout=3)
        if connected:
            await comm.disconnect()
            await live.get_relay().stop()
        return connected, code

    return async_to_sync(run)()


@pytest.fixture
def cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


@pytest.mark.parametrize(
    "origin",
    [
        "http://testserver:8080",  # another port of the allowed host: was accepted
        "http://testserver:443",
        "https://testserver",  # another scheme
        "https://testserver:80",
        "ws://testserver",
        "http://evil.example",
        "http://testserver.evil.example",
        "null",
        "",
        "http://testserver/path",
        "http://testserver:99999",
        None,
    ],
)
def test_another_origin_is_refused(cookie, origin):
    assert connect(cookie, origin)[0] is False


@pytest.mark.parametrize("origin", ["http://testserver", "http://testserver:80", "HTTP://TestServer"])
def test_the_sites_own_origin_is_accepted(cookie, origin):
    assert connect(cookie, origin) == (True, None)


def test_the_port_must_match_the_host_the_page_was_served_from(cookie):
    assert connect(cookie, "http://testserver:8000", host="testserver:8000") == (True, None)
    assert connect(cookie, "http://testserver:8001", host="testserver:8000")[0] is False
    assert connect(cookie, "http://testserver", host="testserver:8000")[0] is False


def test_a_host_outside_allowed_hosts_is_refused_even_when_origin_matches(cookie):
    assert connect(cookie, "http://evil.example", host="evil.example")[0] is False


def test_behind_a_tls_proxy_https_is_the_sites_scheme(cookie, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

    assert connect(cookie, "https://testserver", **{"x-forwarded-proto": "https"}) == (True, None)
    assert connect(cookie, "http://testserver", **{"x-forwarded-proto": "https"})[0] is False


def test_csrf_trusted_origins_are_accepted_exactly(cookie, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://shop.example.com"]

    assert connect(cookie, "https://shop.example.com") == (True, None)
    assert connect(cookie, "https://shop.example.com:8443")[0] is False
    assert connect(cookie, "http://shop.example.com")[0] is False


def test_origin_key_and_origin_allowed_directly():
    assert origin_key("http://a.example") == ("http", "a.example", 80)
    assert origin_key("https://A.example:443/") == ("https", "a.example", 443)
    assert origin_key("ftp://a.example") is None and origin_key("http://a:x") is None
    scope = {
        "type": "websocket",
        "scheme": "wss",
        "headers": [(b"host", b"testserver"), (b"origin", b"https://testserver")],
    }
    assert origin_allowed(scope)
    assert not origin_allowed({**scope, "scheme": "ws"})
