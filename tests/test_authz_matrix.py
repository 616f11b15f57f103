"""Authorization matrix: every URL pattern of the project × every role.

The routes are found by walking the resolver (and the websocket routes), so a new route cannot be
forgotten: ``test_every_route_is_classified`` fails until it is given an access class below.

Roles: anonymous, owner (alice: owns the rental, the API token, the SSH key), other (bob),
staff (carol, ``is_staff`` without admin model permissions). Pages are requested with a session
login, API routes with each role's own API token.

Access classes (DESIGN.md, Security):

* ``PUBLIC``: health, ``/agent.py``, the login pages, logout. Anyone; never a 5xx.
* ``AGENT``: the agent heartbeat and benchmark. 401 for everyone without a per-rental Bearer agent token:
  neither a session nor an API token will do.
* ``METRICS``: its own rules (a Bearer METRICS_TOKEN when set, else loopback only): with a token
  set, every role without it gets 401.
* ``LOGIN``: any logged-in user; data in them is scoped to the user (checked by the leak check:
  no response to the other user ever holds the owner's rental id or private key).
* ``OWNER_OR_STAFF``: one rental, page or API: the owner and staff; anyone else gets a 404.
* ``OWNER_ONLY``: the private key download, token revoke, SSH key delete: the owner alone (staff
  see sessions, never someone's private key, and manage others' tokens in the admin).
* ``STAFF``: safety page, kill switch, alert resolve, audit log: others get a 404.
* ``ADMIN``: the Django admin: non-staff are redirected to the admin login.

Anonymous never gets a 200 on a protected route (pages: 302 to the login page; API: 401/403).
A refused request changes nothing (rental, events, token, SSH key, alert, queued tasks).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.utils import timezone
from rest_framework.test import APIClient

from sessions import keys, live
from sessions.models import Alert, AlertKind, Rental, RentalEvent, SSHKey, Status
from shopper.asgi import application
from shopper.models import ApiToken
from shopper.urls import websocket_urlpatterns
from tests.factories import RentalFactory, SSHKeyFactory

PUBLIC, AGENT, METRICS, LOGIN, OWNER_OR_STAFF, OWNER_ONLY, STAFF, ADMIN, WEBSOCKET = (
    "public", "agent", "metrics", "login", "owner_or_staff", "owner_only", "staff", "admin", "websocket",
)  # fmt: skip
PAGE, API = "page", "api"
ROLES = ("anonymous", "owner", "other", "staff")


@dataclass(frozen=True)
class Route:
    access: str
    kind: str = PAGE
    methods: tuple[str, ...] = ("get",)
    data: dict = field(default_factory=dict)
    pk: str = "rental"  # what ``pk`` stands for in a router route


SESSION_API = r"api/v1/^sessions/(?P<pk>[^/]+)"
ROUTES: dict[str, Route] = {
    # project pages
    "": Route(LOGIN),
    "metrics": Route(METRICS),
    "agent.py": Route(PUBLIC),
    "tokens/": Route(LOGIN),
    "settings/": Route(LOGIN),
    "tokens/<int:token_id>/revoke/": Route(OWNER_ONLY, methods=("post",)),
    "audit/": Route(STAFF),
    "offers/": Route(LOGIN),
    "login/": Route(PUBLIC),
    "logout/": Route(PUBLIC, methods=("post",)),
    # sessions
    "offers/<int:offer_id>/rent/": Route(LOGIN),
    "offers/<int:offer_id>/rent/estimate/": Route(LOGIN),
    "sessions/": Route(LOGIN),
    "sessions/<uuid:rental_id>/": Route(OWNER_OR_STAFF),
    "sessions/<uuid:rental_id>/ssh-key/": Route(OWNER_ONLY),
    "sessions/<uuid:rental_id>/done/": Route(OWNER_OR_STAFF, methods=("post",)),
    "sessions/<uuid:rental_id>/extend/": Route(OWNER_OR_STAFF, methods=("post",), data={"hours": "1"}),
    "sessions/<uuid:rental_id>/shutdown/": Route(OWNER_OR_STAFF, methods=("post",)),
    "sessions/<uuid:rental_id>/idle-stop/": Route(
        OWNER_OR_STAFF, methods=("post",), data={"idle_stop_minutes": "30"}
    ),
    "sessions/<uuid:rental_id>/rent-again/": Route(OWNER_OR_STAFF),
    "keys/": Route(LOGIN),
    "keys/<int:key_id>/delete/": Route(OWNER_ONLY, methods=("post",)),
    "safety/": Route(STAFF),
    "safety/kill-switch/": Route(STAFF, methods=("post",), data={"confirm": "STOP ALL"}),
    "safety/alerts/<int:alert_id>/resolve/": Route(STAFF, methods=("post",)),
    "safety/alerts/<int:alert_id>/destroy/": Route(STAFF, methods=("post",)),
    "gpus/": Route(LOGIN),
    # costs
    "costs/": Route(LOGIN),
    "costs/export.csv": Route(LOGIN),
    # API
    "api/v1/health": Route(PUBLIC, API),
    "api/v1/agent/heartbeat": Route(AGENT, API, methods=("post",)),
    "api/v1/agent/benchmark": Route(AGENT, API, methods=("post",)),
    "api/v1/^inventory$": Route(LOGIN, API),
    "api/v1/^inventory/(?P<pk>[^/]+)$": Route(LOGIN, API, pk="offer"),
    "api/v1/costs": Route(LOGIN, API),
    "api/v1/gpus": Route(LOGIN, API),
    "api/v1/schema/": Route(LOGIN, API),
    "api/v1/docs/": Route(LOGIN, API),
    "api/v1/^sessions$": Route(LOGIN, API),
    f"{SESSION_API}$": Route(OWNER_OR_STAFF, API, methods=("get", "delete")),
    f"{SESSION_API}/done$": Route(OWNER_OR_STAFF, API, methods=("post",)),
    f"{SESSION_API}/events$": Route(OWNER_OR_STAFF, API),
    f"{SESSION_API}/extend$": Route(OWNER_OR_STAFF, API, methods=("post",), data={"hours": 1}),
    f"{SESSION_API}/ssh-key$": Route(OWNER_ONLY, API),
    # websocket
    "ws/rentals/": Route(WEBSOCKET),
}


def classify(pattern: str) -> Route | None:
    if pattern in ROUTES:
        return ROUTES[pattern]
    if pattern == "admin/login/":
        return Route(PUBLIC)
    if pattern.startswith("admin/"):
        # Every other admin route goes through AdminSite.admin_view (staff only).
        return Route(ADMIN)
    return None


def walk(patterns, prefix: str = "") -> list[str]:
    found = []
    for p in patterns:
        if isinstance(p, URLResolver):
            found += walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            found.append(prefix + str(p.pattern))
    return found


HTTP_PATTERNS = walk(get_resolver().url_patterns)
WS_PATTERNS = walk(websocket_urlpatterns)


def test_every_route_is_classified():
    missing = [p for p in HTTP_PATTERNS + WS_PATTERNS if classify(p) is None]
    assert not missing, f"Give these routes an access class in ROUTES: {missing}"
    assert len(HTTP_PATTERNS) == len(set(HTTP_PATTERNS))
    stale = [p for p in ROUTES if p not in HTTP_PATTERNS + WS_PATTERNS]
    assert not stale, f"ROUTES names routes that no longer exist: {stale}"


# --------------------------------------------------------------------------------------------
# The world: the owner's objects, one token per role, queued tasks recorded
# --------------------------------------------------------------------------------------------
@pytest.fixture
def world(db, user, other_user, staff, make_offer, enqueued):
    now = timezone.now()
    offer = make_offer()
    public, pem = keys.keypair_generate("test")
    rental = RentalFactory(
        consumer=user,
        offer=offer,
        now=now,
        active_since=now - timedelta(minutes=5),
        ssh_host="10.0.0.1",
        ssh_port=22,
        ssh_public_key=public,
        private_key=pem,
        agent_token_hash="0" * 64,
    )
    target_token, _ = ApiToken.issue(user=user, name="revoke me")
    ssh_key = SSHKeyFactory(user=user, public_key=public)
    alert = Alert.objects.create(kind=AlertKind.GHOST, rental=rental, message="ghost")
    api_keys = {
        role: ApiToken.issue(user=who, name=f"matrix {role}")[1]
        for role, who in (("owner", user), ("other", other_user), ("staff", staff))
    }
    users = {"anonymous": None, "owner": user, "other": other_user, "staff": staff}
    values = {
        "rental_id": str(rental.pk),
        "offer_id": str(offer.pk),
        "token_id": str(target_token.pk),
        "key_id": str(ssh_key.pk),
        "alert_id": str(alert.pk),
        # admin
        "object_id": str(rental.pk),
        "content_type_id": str(ContentType.objects.get_for_model(Rental).pk),
        "id": str(user.pk),
        "app_label": "costs",
        "url": "no-such-page/",
    }
    return SimpleNamespace(
        rental=rental, pem=pem, offer=offer, token=target_token, ssh_key=ssh_key, alert=alert,
        api_keys=api_keys, users=users, values=values, queued=enqueued,
    )  # fmt: skip


def snapshot(w) -> tuple:
    """Everything a refused request must leave alone."""
    r = Rental.objects.get(pk=w.rental.pk)
    return (
        r.status,
        r.reservation_ends_at,
        r.stop_requested_at,
        r.ssh_private_key_encrypted,
        r.last_heartbeat_at,
        RentalEvent.objects.filter(rental=r).count(),
        ApiToken.objects.get(pk=w.token.pk).revoked_at,
        SSHKey.objects.filter(pk=w.ssh_key.pk).exists(),
        Alert.objects.get(pk=w.alert.pk).resolved_at,
        Rental.objects.count(),
        LogEntry.objects.count(),
        len(w.queued),
    )


def concrete(pattern: str, route: Route, w) -> str:
    """The pattern with real ids of the owner's objects in it."""
    values = {**w.values, "pk": w.values["offer_id"] if route.pk == "offer" else w.values["rental_id"]}
    url = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: values[m.group(1)], pattern)  # regex groups
    url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], url)  # path converters
    url = "/" + url.replace("^", "").replace("$", "")
    return url


def client_for(role: str, route: Route, w):
    if route.kind == API and route.access != AGENT:
        c = APIClient()
        if role != "anonymous":
            c.credentials(HTTP_AUTHORIZATION=f"Token {w.api_keys[role]}")
        return c
    c = Client()
    if role != "anonymous":
        c.force_login(w.users[role])
    return c


def send(c, method: str, url: str, route: Route):
    if route.kind == API:
        return getattr(c, method)(url, route.data or None, format="json") if method != "get" else c.get(url)
    if method == "get":
        return c.get(url)
    return getattr(c, method)(url, route.data)


def body(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode(errors="replace")
    return response.content.decode(errors="replace")


HTTP_CASES = [
    pytest.param(p, role, id=f"{role}:{p or '/'}")
    for p in HTTP_PATTERNS
    if classify(p) is not None
    for role in ROLES
]


@pytest.mark.parametrize(("pattern", "role"), HTTP_CASES)
def test_route_access(world, pattern, role, settings):
    w, route = world, classify(pattern)
    settings.METRICS_TOKEN = "metrics-token-" + "x" * 20  # with a token set, only it opens /metrics
    url = concrete(pattern, route, w)
    # The concrete URL reaches this very pattern (resolved routes drop the regex anchors "^").
    assert resolve(url).route == re.sub(r"(^|/)\^", r"\1", pattern), url
    c = client_for(role, route, w)
    for method in route.methods:
        before = snapshot(w)
        response = send(c, method, url, route)
        code = response.status_code
        where = f"{method.upper()} {url} as {role}: {code}"
        assert code < 500, where
        if code == 200 and role == "other":  # the leak check
            text = body(response)
            assert str(w.rental.pk) not in text and w.pem not in text, f"{where} shows the owner's data"
        expectation = _expected(route, role)
        if expectation == "allowed":
            assert 200 <= code < 400, where
            if method == "get" and route.access != PUBLIC:
                assert code == 200, where
            continue
        if expectation == "allowed_admin":
            assert not (code == 302 and response["Location"].startswith("/admin/login/")), where
            continue
        if expectation == "public":
            assert code in (200, 302), where
            if role == "anonymous" and method == "get":
                assert code == 200, where
            continue
        # Refused: by the right means, and nothing changed.
        if expectation == "login":
            assert code == 302 and response["Location"].startswith("/login/?next="), where
        elif expectation == "admin_login":
            # AdminSite.admin_view; its logout sends non-staff to the admin index (then the login).
            to = "/admin/" if pattern == "admin/logout/" else "/admin/login/?next="
            assert code == 302 and response["Location"].startswith(to), where
        elif expectation == "unauthenticated":
            assert code in (401, 403), where
        elif expectation == "agent":
            assert code == 401, where
        elif expectation == "404":
            assert code == 404, where
        assert snapshot(w) == before, f"{where} changed something"


def _expected(route: Route, role: str) -> str:
    if route.access == PUBLIC:
        return "public"
    if route.access in (AGENT, METRICS):
        return "agent"
    if route.access == ADMIN:
        return "allowed_admin" if role == "staff" else "admin_login"
    if role == "anonymous":
        return "unauthenticated" if route.kind == API else "login"
    if route.access == LOGIN:
        return "allowed"
    if route.access == STAFF:
        return "allowed" if role == "staff" else "404"
    if route.access == OWNER_OR_STAFF:
        return "allowed" if role in ("owner", "staff") else "404"
    if route.access == OWNER_ONLY:
        return "allowed" if role == "owner" else "404"
    raise AssertionError(route)


@pytest.mark.parametrize("role", ROLES)
def test_staff_reach_the_admin_and_others_do_not(world, role):
    """The admin index: staff get it (200), everyone else the admin login."""
    c = client_for(role, Route(ADMIN), world)
    response = c.get("/admin/")
    if role == "staff":
        assert response.status_code == 200
    else:
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("url", ["/api/v1/agent/heartbeat", "/api/v1/agent/benchmark"])
def test_the_agent_endpoints_want_the_agent_token_whoever_asks(world, role, url):
    """Neither a session, an API token, nor a wrong bearer token is an agent token."""
    body_ = json.dumps(
        {"rental_id": str(world.rental.pk), "gpus": [], "dtype": "bf16", "tflops": 1, "gbps": 1}
    )
    attempts = [{}, {"HTTP_AUTHORIZATION": "Bearer wrong"}]
    if role != "anonymous":
        attempts.append({"HTTP_AUTHORIZATION": f"Token {world.api_keys[role]}"})
    c = client_for(role, Route(AGENT, PAGE), world)  # logged in with a session, too
    for headers in attempts:
        before = snapshot(world)
        response = c.post(url, body_, content_type="application/json", **headers)
        assert response.status_code == 401, headers
        assert snapshot(world) == before


def test_the_other_users_lists_do_not_show_the_owners_rental(world):
    """The LOGIN routes that list rentals are scoped: the owner sees it, the other user does not."""
    for role, visible in (("owner", True), ("other", False), ("staff", True)):
        page = client_for(role, Route(LOGIN), world).get("/sessions/")
        api = client_for(role, Route(LOGIN, API), world).get("/api/v1/sessions")
        ids = [s["id"] for s in api.json()["results"]]
        assert (str(world.rental.pk) in page.content.decode()) is visible, role
        assert (str(world.rental.pk) in ids) is visible, role
    narrowed = client_for("other", Route(LOGIN, API), world).get("/api/v1/sessions?consumer=alice")
    assert narrowed.json()["results"] == []
    costs = client_for("other", Route(LOGIN, API), world).get("/api/v1/costs?consumer=alice")
    assert costs.status_code == 403


# --------------------------------------------------------------------------------------------
# The websocket
# --------------------------------------------------------------------------------------------
def _cookie(user) -> str:
    c = Client()
    c.force_login(user)
    return c.cookies["sessionid"].value


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("role", "expected"), [("anonymous", 4401), ("other", 4404), ("owner", None), ("staff", None)]
)
def test_websocket_access(user, other_user, staff, role, expected):
    users = {"anonymous": None, "owner": user, "other": other_user, "staff": staff}
    rental = RentalFactory(consumer=user, status=Status.BOOTING)
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if users[role] is not None:
        headers.append((b"cookie", f"sessionid={_cookie(users[role])}".encode()))

    async def run():
        comm = WebsocketCommunicator(application, f"/ws/rentals/?rental={rental.pk}", headers=headers)
        connected, code = await comm.connect()
        try:
            if expected is None:
                assert connected, code
                hello = json.loads(await comm.receive_from(timeout=2))
                while hello.get("type") != "hello":
                    hello = json.loads(await comm.receive_from(timeout=2))
            else:
                assert (connected, code) == (False, expected)
        finally:
            if connected:
                await comm.disconnect()
            await live.get_relay().stop()

    async_to_sync(run)()
