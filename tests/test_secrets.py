"""No secret ever appears in a log line, an admin email or a page (issue 7).

``test_no_secret_leaks_anywhere`` fills a world with distinctive secrets (passwords, API tokens,
a generated private key and its ciphertext, agent tokens, provider keys, SECRET_KEY, the Fernet
keys, METRICS_TOKEN), then drives the site the way people and machines do: every route as
anonymous, owner, staff and superuser, the API with good, bad and revoked tokens and its 400s,
404s and 409s, the agent heartbeat, logins with a wrong and a right password, the admin for every
model, providers that answer errors echoing our key and the request we sent, and views that raise.
Everything is recorded: each response (status, headers, body), every line the configured log
handlers write (at DEBUG, SQL included), every admin email.

A leak is the whole secret or any 16 characters of it (a truncated copy is still a copy), anywhere
except the responses that exist to hand it over: the private key in its owner's downloads and in
the answer that rented with a generated key, the API token in the page that created it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import secrets
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace
from unittest import mock

import pytest
import responses
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.core import mail
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from inventory.services import offers_refresh
from sessions import keys, provisioning, teardown
from sessions.models import Alert, AlertKind, Rental, SSHKey, Status, token_hash
from sessions.reconcile import destroys_stuck_alert, reconcile_all
from shopper.logconfig import RedactFilter
from shopper.models import ApiToken
from tests.test_authz_matrix import AGENT, API, HTTP_PATTERNS, LOGIN, PAGE, Route, classify, concrete, send

pytestmark = pytest.mark.django_db

WINDOW = 16  # a copy this long of any part of a secret is a leak
STEP = WINDOW // 2  # every WINDOW-long piece of a secret contains one STEP-aligned chunk
VAST_URL = "https://vast.invalid"
TD_URL = "https://tensordock.invalid/api/v2"
VAST_OFFER_ID = "4242"


# --------------------------------------------------------------------------------------------
# Finding a secret in text
# --------------------------------------------------------------------------------------------
def _pieces(value: str) -> list[str]:
    """The parts of a secret worth looking for: a PEM's base64 lines, not its armour words."""
    parts = value.split()
    return parts if len(parts) <= 1 else [p for p in parts if len(p) >= WINDOW]


def leaked_piece(secret: str, text: str) -> str | None:
    """The first copy in ``text`` of ``secret`` or of any WINDOW characters of it, else None.

    Searches for STEP-aligned chunks, then checks the windows around each hit: far fewer scans
    of a long text than one per window.
    """
    for piece in _pieces(secret):
        if len(piece) <= WINDOW:
            if piece in text:
                return piece
            continue
        for start in range(0, len(piece) - STEP + 1, STEP):
            chunk = piece[start : start + STEP]
            at = text.find(chunk)
            while at != -1:
                for offset in range(max(0, start - STEP), min(start, len(piece) - WINDOW) + 1):
                    window = piece[offset : offset + WINDOW]
                    begin = at - (start - offset)
                    if begin >= 0 and text.startswith(window, begin):
                        return window
                at = text.find(chunk, at + 1)
    return None


def private_part(pem: str) -> str:
    """The characters of an OpenSSH Ed25519 PEM that encode its private seed, with the PEM's
    line breaks. The rest of the PEM is format boilerplate shared by every such key and the
    public key, which are no secret (and would match another key's PEM or the public key line)."""
    lines = pem.strip().splitlines()[1:-1]
    body = "".join(lines)
    seed = serialization.load_ssh_private_key(pem.encode(), None).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    start = base64.b64decode(body).index(seed)
    first = -(-start * 8 // 6)  # the first base64 character made of seed bits only
    end = (start + len(seed)) * 8 // 6
    width, pieces, at = len(lines[0]), [], first
    while at < end:
        line_end = min(end, (at // width + 1) * width)
        pieces.append(body[at:line_end])
        at = line_end
    return "\n".join(pieces)


def holds(text: str, secret: str) -> bool:
    """Whether ``text`` carries the whole secret (a PEM's lines may be joined by an escaped "\\n")."""
    return all(piece in text for piece in _pieces(secret))


def test_leaked_piece_finds_whole_partial_and_truncated_copies():
    secret = "Zq8-" + secrets.token_urlsafe(30)
    assert leaked_piece(secret, f"key={secret};") == secret[:WINDOW]
    for start in range(len(secret) - WINDOW + 1):  # every 16-character window, wherever it starts
        assert leaked_piece(secret, "…" + secret[start : start + WINDOW] + "…") is not None, start
    assert leaked_piece(secret, secret[3 : 3 + WINDOW - 1]) is None  # 15 characters are not a leak
    broken_up = " ".join(secret[i : i + WINDOW - 1] for i in range(0, len(secret), WINDOW - 1))
    assert leaked_piece(secret, broken_up) is None
    pem = "-----BEGIN X-----\n" + secret + "\n" + secrets.token_urlsafe(30) + "\n-----END X-----"
    assert leaked_piece(pem, "-----BEGIN X----- -----END X-----") is None
    assert leaked_piece(pem, "line " + pem.split("\n")[2][5:25]) is not None


def test_private_part_is_the_seed_inside_the_pem():
    _, pem = keys.keypair_generate("a")
    _, other = keys.keypair_generate("b")
    part = private_part(pem)
    assert 40 <= len(part.replace("\n", "")) <= 43 and all(p in pem for p in part.split("\n"))
    assert leaked_piece(part, pem) is not None
    assert leaked_piece(part, other + keys.keypair_generate("a")[0]) is None


# --------------------------------------------------------------------------------------------
# Recording every response, every log line and every email
# --------------------------------------------------------------------------------------------
@dataclass
class Exchange:
    who: str
    method: str
    path: str
    status: int
    text: str
    allowed: frozenset[str] = frozenset()  # names of the secrets this response exists to hand over


def response_text(response) -> str:
    if getattr(response, "streaming", False):
        content = b"".join(response.streaming_content)
        response.streaming_content = [content]
    else:
        content = response.content
    headers = "\n".join(f"{name}: {value}" for name, value in response.items())
    body = content.decode(errors="replace")
    return f"{response.status_code}\n{headers}\n{response.cookies.output()}\n\n{body}"


class RecordingClient(APIClient):
    """A test client that keeps every response it gets (follow-ups of redirects included)."""

    def __init__(self, who: str, exchanges: list[Exchange], **kwargs):
        super().__init__(**kwargs)
        self.raise_request_exception = False  # a view's exception becomes the 500 page, as in production
        self.who = who
        self.exchanges = exchanges

    def request(self, **request):
        response = super().request(**request)
        exchange = Exchange(
            self.who,
            request["REQUEST_METHOD"],
            request["PATH_INFO"],
            response.status_code,
            response_text(response),
        )
        self.exchanges.append(exchange)
        response.exchange = exchange
        return response


def _loggers() -> list[logging.Logger]:
    return [logging.getLogger()] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]


def _stream_handlers() -> list[logging.StreamHandler]:
    """Every stream handler the logging configuration installed (pytest's own capture excluded)."""
    found: list[logging.StreamHandler] = []
    for logger in _loggers():
        for handler in logger.handlers:
            if (
                isinstance(handler, logging.StreamHandler)
                and not type(handler).__module__.startswith("_pytest")
                and handler not in found
            ):
                found.append(handler)
    return found


@contextmanager
def captured_logs():
    """What the configured handlers write, at DEBUG for every logger, SQL included (as a
    DEBUG=True server with LOG_LEVEL=DEBUG would): the handlers' own filters and formatters
    decide what reaches the stream, so this is what an operator would read."""
    stream = io.StringIO()
    levels = {logger: logger.level for logger in _loggers()}
    handlers = _stream_handlers()
    assert any(any(isinstance(f, RedactFilter) for f in h.filters) for h in handlers), "no redacting handler"
    old_streams = [h.setStream(stream) for h in handlers]
    for logger in levels:
        logger.setLevel(logging.DEBUG)
    connection.force_debug_cursor = True
    try:
        yield stream
    finally:
        connection.force_debug_cursor = False
        for logger, level in levels.items():
            logger.setLevel(level)
        for handler, old in zip(handlers, old_streams, strict=True):
            if old is not None:
                handler.setStream(old)


def mail_text() -> str:
    parts = []
    for message in mail.outbox:
        parts += [message.subject, message.body]
        parts += [content for content, _ in getattr(message, "alternatives", [])]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Secrets and the world
# --------------------------------------------------------------------------------------------
def distinctive(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(24)}"


@pytest.fixture
def secret_settings(settings):
    values = {
        "SECRET_KEY": distinctive("django-secret"),
        "SHOPPER_FERNET_KEYS": [Fernet.generate_key().decode(), Fernet.generate_key().decode()],
        "METRICS_TOKEN": distinctive("metrics"),
        "VASTAI_API_KEY": secrets.token_hex(32),  # Vast keys are 64 hex digits
        "TENSORDOCK_API_TOKEN": distinctive("td"),
    }
    for name, value in values.items():
        setattr(settings, name, value)
    settings.VASTAI_API_URL = VAST_URL
    settings.TENSORDOCK_API_URL = TD_URL
    settings.PROVIDER_MIN_INTERVAL_SECONDS = 0
    settings.SHOPPER_LABEL_LOOKUPS_AFTER_ERROR = 1
    settings.ADMINS = [("Ops", "ops@example.com")]  # Django emails 500s to them: that text counts too
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only
    return values


@pytest.fixture
def world(secret_settings, settings, django_user_model, make_offer):
    queued: list = []
    settings.SHOPPER_TASK_QUEUE = lambda func, *args: queued.append((func, *args))
    found: dict[str, str] = {
        "SECRET_KEY": secret_settings["SECRET_KEY"],
        "SHOPPER_FERNET_KEYS[0]": secret_settings["SHOPPER_FERNET_KEYS"][0],
        "SHOPPER_FERNET_KEYS[1]": secret_settings["SHOPPER_FERNET_KEYS"][1],
        "METRICS_TOKEN": secret_settings["METRICS_TOKEN"],
        "VASTAI_API_KEY": secret_settings["VASTAI_API_KEY"],
        "TENSORDOCK_API_TOKEN": secret_settings["TENSORDOCK_API_TOKEN"],
    }
    passwords = {role: distinctive(f"pw-{role}") for role in ("owner", "staff", "admin")}
    found.update({f"{role} password": pw for role, pw in passwords.items()})
    found["mistyped password"] = distinctive("pw-typo")
    users = {
        "anonymous": None,
        "owner": django_user_model.objects.create_user("alice", "alice@example.com", passwords["owner"]),
        "staff": django_user_model.objects.create_user(
            "carol", "carol@example.com", passwords["staff"], is_staff=True
        ),
        "admin": django_user_model.objects.create_superuser("root", "root@example.com", passwords["admin"]),
    }
    api_keys = {}
    for role in ("owner", "staff", "admin"):
        _, api_keys[role] = ApiToken.issue(user=users[role], name=f"{role} script")
        found[f"{role} api token"] = api_keys[role]
    revoked, found["revoked api token"] = ApiToken.issue(user=users["owner"], name="old laptop")
    ApiToken.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    walk_target, found["walk target api token"] = ApiToken.issue(
        user=users["owner"], name="revoked by the walk"
    )

    now = timezone.now()
    offer = make_offer(provider_offer_id=VAST_OFFER_ID, price_per_hour="0.5000")
    public, pem = keys.keypair_generate("world")
    pems = {"world private key": pem}
    found["world private key"] = private_part(pem)
    found["world agent token"] = secrets.token_urlsafe(32)
    rental = Rental.objects.create(
        consumer=users["owner"], offer=offer, provider="vastai", provider_offer_id=VAST_OFFER_ID,
        gpu_type=offer.gpu_type, gpu_count=1, vram_gb=24, price_per_hour=Decimal("0.5000"),
        status=Status.ACTIVE, active_since=now - timedelta(minutes=5), provider_instance_id="555",
        ssh_host="10.0.0.1", ssh_port=22, ssh_user="root", ssh_public_key=public,
        ssh_private_key_encrypted=keys.secret_encrypt(pem),
        reservation_ends_at=now + timedelta(hours=2), hard_max_at=now + timedelta(hours=12),
        agent_token_hash=token_hash(found["world agent token"]),
    )  # fmt: skip
    found["world private key ciphertext"] = rental.ssh_private_key_encrypted
    ended = Rental.objects.create(
        consumer=users["owner"], provider="vastai", provider_offer_id="9", gpu_type=offer.gpu_type,
        gpu_count=1, price_per_hour=Decimal("0.5000"), status=Status.DESTROYED, ended_at=now,
        reservation_ends_at=now, hard_max_at=now, ssh_public_key=public,
    )  # fmt: skip
    ssh_key = SSHKey.objects.create(
        user=users["owner"], name="laptop", public_key=public, fingerprint=keys.public_key_fingerprint(public)
    )
    alert = Alert.objects.create(kind=AlertKind.GHOST, rental=rental, message="ghost")
    values = {
        "rental_id": str(rental.pk),
        "offer_id": str(offer.pk),
        "token_id": str(walk_target.pk),
        "key_id": str(ssh_key.pk),
        "alert_id": str(alert.pk),
        "object_id": str(rental.pk),
        "content_type_id": str(ContentType.objects.get_for_model(Rental).pk),
        "id": str(users["owner"].pk),
        "app_label": "rentals",
        "url": "no-such-page/",
    }
    return SimpleNamespace(
        secrets=found, users=users, api_keys=api_keys, offer=offer, rental=rental, ended=ended,
        pems=pems, values=values, queued=queued, exchanges=[],
    )  # fmt: skip


def client(w, role: str, *, api: bool = False, login: bool = True) -> RecordingClient:
    c = RecordingClient(role, w.exchanges)
    if role == "anonymous":
        return c
    if api:
        c.credentials(HTTP_AUTHORIZATION=f"Token {w.api_keys[role]}")
    elif login:
        c.force_login(w.users[role])
    return c


# --------------------------------------------------------------------------------------------
# Providers that answer errors echoing our key, our Authorization header and our request
# --------------------------------------------------------------------------------------------
def _echo(request) -> str:
    """What a careless provider puts in an error: the credentials and the body we sent."""
    return f"Authorization: {request.headers.get('Authorization')} body={(request.body or b'')[:2000]!r}"


def _vast_offer() -> dict:
    return {
        "id": int(VAST_OFFER_ID), "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564,
        "dph_total": 0.5, "rentable": True, "rented": False, "geolocation": "Oregon, US",
        "reliability": 0.99, "cpu_cores": 16, "cpu_cores_effective": 8, "cpu_ram": 64000,
    }  # fmt: skip


def providers_failing(w, rsps: responses.RequestsMock) -> None:
    vast_key, td_token = w.secrets["VASTAI_API_KEY"], w.secrets["TENSORDOCK_API_TOKEN"]
    owner, staff, anonymous = client(w, "owner"), client(w, "staff"), client(w, "anonymous")

    def look_at_feeds():
        anonymous.get("/api/v1/health")
        owner.get("/offers/")
        owner.get("/")
        staff.get("/")

    # 1. The menu refresh: Vast refuses the key and quotes it; TensorDock's in-body error quotes it.
    def vast_refuses(request):
        return 401, {}, json.dumps({"error": "invalid_key", "msg": f"bad key {vast_key}; {_echo(request)}"})

    def tensordock_refuses(request):  # TensorDock answers 200 with the error in the body
        return 200, {}, json.dumps({"status": 400, "error": f"invalid token {td_token} ({_echo(request)})"})

    rsps.add_callback(responses.POST, f"{VAST_URL}/api/v0/bundles/", callback=vast_refuses)
    rsps.add_callback(responses.GET, f"{TD_URL}/locations", callback=tensordock_refuses)
    offers_refresh(force=True)
    look_at_feeds()

    # 2. The other error shapes: a 5xx in plain text, TensorDock's validation list.
    rsps.replace(
        responses.POST, f"{VAST_URL}/api/v0/bundles/", body=f"upstream broke; key {vast_key}", status=502
    )
    rsps.replace(
        responses.GET, f"{TD_URL}/locations", status=422,
        json=[{"code": "invalid", "message": f"api_token={td_token} is not allowed here", "path": ["q"]}],
    )  # fmt: skip
    offers_refresh(force=True)
    look_at_feeds()

    # 3. Renting while the provider fails the re-check, then with a generated key while it answers.
    api = client(w, "owner", api=True)
    api.post("/api/v1/sessions", {"offer_id": w.offer.pk, "reservation_hours": 1}, format="json")
    rsps.replace(
        responses.POST, f"{VAST_URL}/api/v0/bundles/", json={"success": True, "offers": [_vast_offer()]}
    )
    rented = api.post(
        "/api/v1/sessions",
        {"offer_id": w.offer.pk, "reservation_hours": 1, "generate_key": True},
        format="json",
    )
    assert rented.status_code == 201, rented.exchange.text
    rented.exchange.allowed = frozenset({"rented private key"})
    w.pems["rented private key"] = rented.json()["ssh_private_key"]
    w.secrets["rented private key"] = private_part(w.pems["rented private key"])
    rental = Rental.objects.get(pk=rented.json()["id"])
    w.secrets["rented private key ciphertext"] = rental.ssh_private_key_encrypted
    w.rented = rental

    # 4. Provisioning: the create is refused with the agent's environment and our key quoted back.
    sent = {}

    def create(request):
        env = json.loads(request.body)["env"]
        sent["agent token"] = env["SHOPPER_AGENT_TOKEN"]
        body = {"error": "invalid_args", "msg": f"env rejected: {env} {_echo(request)}"}
        return 400, {}, json.dumps(body)

    rsps.add_callback(responses.PUT, f"{VAST_URL}/api/v0/asks/{VAST_OFFER_ID}/", callback=create)
    rsps.add(responses.GET, f"{VAST_URL}/api/v1/instances/", json={"success": True, "instances": []})
    provisioning.rental_provision(rental_id=rental.pk)
    w.secrets["provisioning agent token"] = sent["agent token"]
    rental.refresh_from_db()
    assert rental.status == Status.FAILED, rental.status

    # 5. Teardown: destroy answers 500 quoting the key; the rental stays stopping.
    stopping = Rental.objects.create(
        consumer=w.users["owner"], provider="vastai", provider_offer_id="7", gpu_type="RTX 4090 24GB",
        gpu_count=1, price_per_hour=Decimal("0.5000"), status=Status.STOPPING, provider_instance_id="777",
        stop_requested_at=timezone.now(), reservation_ends_at=timezone.now(), hard_max_at=timezone.now(),
    )  # fmt: skip
    rsps.add_callback(
        responses.DELETE, f"{VAST_URL}/api/v0/instances/777/",
        callback=lambda r: (500, {}, f"could not destroy for {vast_key}: {_echo(r)}"),
    )  # fmt: skip
    assert teardown.rental_teardown(rental_id=stopping.pk, budget_seconds=0) is False
    w.stopping = stopping
    Rental.objects.filter(pk=stopping.pk).update(stop_requested_at=timezone.now() - timedelta(hours=1))
    assert destroys_stuck_alert() == 1  # an alert, with its email

    # 6. Reconciliation: both listings fail, quoting the key.
    rsps.replace(
        responses.GET, f"{VAST_URL}/api/v1/instances/",
        body=f"forbidden: {vast_key}", status=403,
    )  # fmt: skip
    rsps.add(responses.GET, f"{TD_URL}/instances", json={"status": 401, "error": f"token {td_token} expired"})
    results = reconcile_all()
    assert all(r.aborted for r in results), results
    look_at_feeds()


# --------------------------------------------------------------------------------------------
# The rest of the journey
# --------------------------------------------------------------------------------------------
def logins(w) -> None:
    c = client(w, "anonymous")
    c.get("/login/")
    wrong = c.post("/login/", {"username": "alice", "password": w.secrets["mistyped password"]})
    assert wrong.status_code == 200
    right = c.post("/login/", {"username": "alice", "password": w.secrets["owner password"]})
    assert right.status_code == 302
    c.get("/")
    admin_login = client(w, "anonymous").post(
        "/admin/login/?next=/admin/", {"username": "root", "password": w.secrets["admin password"]}
    )
    assert admin_login.status_code == 302


def tokens_page(w) -> None:
    owner = client(w, "owner")
    created = owner.post("/tokens/", {"name": "ci"})
    assert created.status_code == 200
    key = re.search(r"gs_[A-Za-z0-9_-]{20,}", created.content.decode()).group(0)
    w.secrets["page-created api token"] = key
    created.exchange.allowed = frozenset({"page-created api token"})
    owner.get("/tokens/")
    scripted = RecordingClient("owner", w.exchanges)
    scripted.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert scripted.get("/api/v1/sessions").status_code == 200
    token = ApiToken.objects.get(key_hash=token_hash(key))
    owner.post(f"/tokens/{token.pk}/revoke/", follow=True)
    assert scripted.get("/api/v1/sessions").status_code == 401
    assert scripted.get("/api/v1/inventory").status_code == 401  # the cached fast path
    for bad in (f"Token {w.secrets['revoked api token']}", "Token gs_" + "x" * 43, f"Bearer {key}"):
        c = RecordingClient("anonymous", w.exchanges)
        c.credentials(HTTP_AUTHORIZATION=bad)
        assert c.get("/api/v1/sessions").status_code in (401, 403), bad


def agent_and_metrics(w) -> None:
    url = "/api/v1/agent/heartbeat"
    body = json.dumps({"rental_id": str(w.rental.pk), "gpus": [{"util": 50}]})
    c = client(w, "anonymous")
    good = {"HTTP_AUTHORIZATION": f"Bearer {w.secrets['world agent token']}"}
    assert c.post(url, body, content_type="application/json", **good).status_code == 200
    assert c.post(url, "{not json", content_type="application/json", **good).status_code == 400
    assert (
        c.post(url, json.dumps({"gpus": "many"}), content_type="application/json", **good).status_code == 400
    )
    bad = {"HTTP_AUTHORIZATION": f"Bearer {w.secrets['provisioning agent token']}"}  # revoked with its rental
    assert c.post(url, body, content_type="application/json", **bad).status_code == 401
    assert c.post(url, body, content_type="application/json").status_code == 401
    assert c.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {w.secrets['METRICS_TOKEN']}").status_code == 200
    assert c.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-metrics-token").status_code == 401


def api_errors(w) -> None:
    api = client(w, "owner", api=True)
    assert api.post("/api/v1/sessions", {"offer_id": "x"}, format="json").status_code == 400
    assert (
        api.post(
            "/api/v1/sessions", {"offer_id": "999999", "reservation_hours": 1}, format="json"
        ).status_code
        == 404
    )
    assert api.get("/api/v1/inventory?max_price=cheap").status_code == 400
    assert api.get("/api/v1/sessions/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.post(f"/api/v1/sessions/{w.ended.pk}/done", format="json").status_code == 409
    assert api.post(f"/api/v1/sessions/{w.rental.pk}/extend", {"hours": -1}, format="json").status_code == 400
    assert api.get(f"/api/v1/sessions/{w.ended.pk}/ssh-key").status_code == 410


def views_that_raise(w) -> None:
    """A view's exception with credentials in its message: the 500 page, the log, the email."""
    message = (
        f"upstream said: api_key={w.secrets['VASTAI_API_KEY']} "
        f"Authorization: Bearer {w.secrets['TENSORDOCK_API_TOKEN']} Token {w.api_keys['owner']}"
    )
    with ExitStack() as stack:
        for target in ("inventory.views.offers_freshness", "shopper.views.offers_freshness"):
            stack.enter_context(mock.patch(target, side_effect=RuntimeError(message)))
        assert client(w, "owner").get("/offers/").status_code == 500
        assert client(w, "anonymous").get("/api/v1/health").status_code == 500


def key_downloads(w) -> None:
    owner = client(w, "owner")
    owner_api = client(w, "owner", api=True)
    for c, url in (
        (owner, f"/sessions/{w.rental.pk}/ssh-key/"),
        (owner_api, f"/api/v1/sessions/{w.rental.pk}/ssh-key"),
    ):
        response = c.get(url)
        assert response.status_code == 200, url
    for role in ("staff", "admin"):  # staff see sessions, never someone's private key
        assert client(w, role).get(f"/sessions/{w.rental.pk}/ssh-key/").status_code == 404
        assert client(w, role, api=True).get(f"/api/v1/sessions/{w.rental.pk}/ssh-key").status_code == 404


def rental_pages(w) -> None:
    for rental in (w.rental, w.rented, w.stopping, w.ended):
        for role in ("owner", "staff"):
            client(w, role).get(f"/sessions/{rental.pk}/")
            api = client(w, role, api=True)
            api.get(f"/api/v1/sessions/{rental.pk}")
            api.get(f"/api/v1/sessions/{rental.pk}/events")
    for role in ("owner", "staff", "admin"):
        client(w, role).get("/sessions/")
        client(w, role, api=True).get("/api/v1/sessions")
    for role in ("staff", "admin"):
        c = client(w, role)
        c.get("/audit/")
        c.get("/audit/?what=error")
        c.get("/safety/")


def walk_every_route(w) -> None:
    """Every URL pattern of the project (tests/test_authz_matrix.py), every role, every method."""
    for pattern in HTTP_PATTERNS:
        # A route the matrix has not classified yet is still walked (its own test flags it).
        route = classify(pattern) or Route(LOGIN, API if pattern.startswith("api/") else PAGE)
        url = concrete(pattern, route, w)
        for role in ("anonymous", "owner", "staff", "admin"):
            if route.access == AGENT:
                c = client(w, role, login=False)
            else:
                c = client(w, role, api=route.kind == API)
            for method in route.methods:
                response = send(c, method, url, route)
                assert response.status_code < 500, f"{method} {url} as {role}: {response.status_code}"


def admin_pages(w) -> None:
    """The admin of every registered model, as a superuser: lists, change, history and delete pages."""
    c = client(w, "admin")
    c.get("/admin/")
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        base = f"/admin/{opts.app_label}/{opts.model_name}/"
        assert c.get(base).status_code == 200, base
        for obj in model_admin.get_queryset(mock.Mock(user=w.users["admin"]))[:5]:
            for page in ("change", "history", "delete"):
                c.get(f"{base}{obj.pk}/{page}/")


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------
def where(text: str, piece: str) -> str:
    at = text.find(piece)
    return text[max(0, at - 150) : at + len(piece) + 50].replace("\n", "⏎")


def find_leaks(w, logs: str, exchanges: list[Exchange], emails: str) -> list[str]:
    leaks = []
    for name, value in w.secrets.items():
        for what, text in (("the log", logs), ("an admin email", emails)):
            piece = leaked_piece(value, text)
            if piece:
                leaks.append(f"{name} in {what}: …{where(text, piece)}…")
        for ex in exchanges:
            if name in ex.allowed:
                continue
            piece = leaked_piece(value, ex.text)
            if piece:
                leaks.append(
                    f"{name} in {ex.method} {ex.path} as {ex.who} ({ex.status}): …{where(ex.text, piece)}…"
                )
    return leaks


def test_no_secret_leaks_anywhere(world):
    w = world
    with captured_logs() as stream:
        logins(w)
        tokens_page(w)
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            providers_failing(w, rsps)
        agent_and_metrics(w)
        api_errors(w)
        views_that_raise(w)
        key_downloads(w)
        rental_pages(w)
        admin_pages(w)
        walk_every_route(w)
        logs = stream.getvalue()
    emails = mail_text()

    # The recording saw what it had to see, or an empty check would pass.
    assert "Unauthorized: /api/v1/agent/heartbeat" in logs
    assert "offers_refresh vastai error" in logs and "Internal Server Error: /offers/" in logs
    assert "SELECT" in logs  # SQL at DEBUG
    assert "Internal Server Error: /offers/" in emails and "Destroy still failing" in emails
    assert any(
        ex.path.startswith(f"/admin/rentals/rental/{w.rental.pk}/change/") and ex.status == 200
        for ex in w.exchanges
    )

    # The responses that exist to hand a secret over do so, and only to its owner.
    pem_urls = {f"/sessions/{w.rental.pk}/ssh-key/", f"/api/v1/sessions/{w.rental.pk}/ssh-key"}
    downloads = [ex for ex in w.exchanges if ex.path in pem_urls and ex.status == 200]
    assert downloads and all(ex.who == "owner" and ex.method == "GET" for ex in downloads)
    for ex in downloads:
        assert holds(ex.text, w.pems["world private key"])
        ex.allowed = frozenset({"world private key"})
    for name in ("page-created api token", "rented private key"):
        handing_over = [ex for ex in w.exchanges if name in ex.allowed]
        assert len(handing_over) == 1 and holds(handing_over[0].text, w.pems.get(name, w.secrets[name])), name

    leaks = find_leaks(w, logs, w.exchanges, emails)
    assert not leaks, "Secrets leaked:\n" + "\n".join(leaks)


def test_the_check_sees_a_leak_in_a_log_line_a_page_and_an_email(world):
    """The recording is not blind: a secret logged, rendered or mailed is reported."""
    w = world
    with captured_logs() as stream:
        logging.getLogger("sessions.services").info("agent token is %s", w.secrets["world agent token"])
        logging.getLogger("some.new.module").debug("key %s", w.pems["world private key"].splitlines()[1:-1])
        page = client(w, "owner").get("/sessions/")
        page.exchange.text += w.secrets["TENSORDOCK_API_TOKEN"][3:20]
        mail.mail_admins("report", f"password {w.secrets['owner password']}")
    leaks = find_leaks(w, stream.getvalue(), w.exchanges, mail_text())
    assert any(leak.startswith("world agent token in the log") for leak in leaks), leaks
    assert any(leak.startswith("world private key in the log") for leak in leaks), leaks
    assert any(leak.startswith("TENSORDOCK_API_TOKEN in GET /sessions/ as owner") for leak in leaks), leaks
    assert any(leak.startswith("owner password in an admin email") for leak in leaks), leaks
    assert len(leaks) == 4, leaks
