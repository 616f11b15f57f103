"""The in-memory menu (inventory/menu.py) answers exactly what the filter class and serializer
answer from the database, for any query: held equal over many random queries, through the real
ASGI application (fast path and Django) and the offers page's HTMX partial."""

from __future__ import annotations

import io
import random
import re
import threading
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlencode

import pytest
import time_machine
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application
from django.core.management import call_command
from django.core.paginator import Paginator
from django.middleware.csrf import _unmask_cipher_token
from django.template.loader import render_to_string
from django.test import RequestFactory
from django.utils import timezone
from django_htmx.middleware import HtmxDetails
from rest_framework.exceptions import NotFound
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from common.api import Pagination
from inventory import fastpath, menu
from inventory.filters import OfferFilterSet, PageSizeForm
from inventory.models import Offer, ProviderFeed
from inventory.serializers import OfferSerializer
from inventory.services import offers_freshness
from inventory.views import SESSION_CACHE_SECONDS, SHELL_SECONDS, sort_headers
from shopper.models import ApiToken

pytestmark = pytest.mark.django_db(transaction=True)

# The last has no spec row: no value figures, last in both value sorts.
GPUS = [
    ("RTX 4090 24GB", 24),
    ("A100 SXM4 80GB", 80),
    ("H100 SXM 80GB", 80),
    ("RTX A6000 48GB", 48),
    ("Imaginary 9000 8GB", 8),
]
CUDA_VERSIONS = ["12.8", "12.4", "11.8", "12.10", "12", "", "n/a"]
LOCATIONS = ["Oregon, US", "Texas, US", "São Paulo, BR", "Zürich, CH", "", "DE"]
GPU_TERMS = ["", "a100", "RTX", "4090", "80gb", "h1", "zz", " sxm ", "Ü", "100 s", "%", "_"]
LOCATION_TERMS = ["", "us", "TEX", "são", "SÃO", "zü", "paulo", "x"]


@pytest.fixture
def offers(make_offer):
    """A menu with ties on every sort key, NULL reliabilities, non-ASCII places, suppressed and
    withdrawn offers; value figures from the spec table (reloaded: transaction tests flush it)."""
    call_command("load_gpu_specs", stdout=io.StringIO())
    rng = random.Random(7)
    now = timezone.now()
    for _ in range(160):
        name, vram = rng.choice(GPUS)
        count = rng.choice([1, 1, 2, 4, 8])
        price = Decimal(rng.choice(["0.3500", "0.5000", "1.2345", "2.0000", "4.1000"])) * count
        hidden = rng.choice([None, None, None, now - timedelta(minutes=5), now + timedelta(minutes=5)])
        make_offer(
            provider=rng.choice(["vastai", "tensordock"]),
            gpu_type=name,
            vram_gb=vram,
            gpu_count=count,
            price_per_hour=price,
            location=rng.choice(LOCATIONS),
            reliability=rng.choice([None, Decimal("0.9500"), Decimal("0.9900"), Decimal("0.1235")]),
            cuda_version=rng.choice([*CUDA_VERSIONS, "12.2", "13.0", "bogus"]),
            driver_version=rng.choice(["", "535.104.05", "550.54.15", "570.133.07", "570"]),
            max_disk_gb=rng.choice([None, 50, 200, 200, 1000]),
            inet_down_mbps=rng.choice([None, 100, 800, 800, 5000]),
            inet_up_mbps=rng.choice([None, 50, 800, 2000]),
            verified=rng.choice([None, True, False]),
            datacenter=rng.choice([None, True, False]),
            max_duration_hours=rng.choice([None, 12, 720, 720, 4000]),
            available=rng.random() > 0.1,
            hidden_until=hidden,
        )
    outcomes_add(random.Random(8), now)


def outcomes_add(rng: random.Random, now) -> None:
    """Recent provisioning outcomes (issue 15) at every confidence level: the offer, its host,
    its location, its GPU model (also of offers gone since), so confidences differ and ties remain."""
    from inventory.models import OutcomeKind, ProvisionOutcome

    offers = list(Offer.objects.all())
    hosts = ["", "m1", "m2", "m3"]
    for o in offers:
        o.host = rng.choice(hosts)
    Offer.objects.bulk_update(offers, ["host"])
    for _ in range(60):
        o = rng.choice(offers)
        ProvisionOutcome.objects.create(
            at=now - timedelta(hours=rng.uniform(0, 30)),
            provider=o.provider,
            provider_offer_id=rng.choice([o.provider_offer_id, "gone-1"]),
            host=rng.choice([o.host, ""]),
            location=rng.choice([o.location, ""]),
            gpu_type=o.gpu_type,
            kind=rng.choice([k for k, _ in OutcomeKind.choices] + ["success"] * 3),
        )


def random_query(rng: random.Random) -> dict:
    q = {}
    if rng.random() < 0.6:
        q["gpu"] = rng.choice(GPU_TERMS)
        if rng.random() < 0.3:  # several: repeated or a comma list
            q["gpu"] = rng.choice([[q["gpu"], rng.choice(GPU_TERMS)], f"{q['gpu']},{rng.choice(GPU_TERMS)}"])
    if rng.random() < 0.15:
        q["min_driver"] = rng.choice(["550", "550.54.15", "570.133.7", "9999", "v550"])
    if rng.random() < 0.15:
        q["min_reliability_pct"] = rng.choice(["95", "99", "12.35", "12.351", "100", "101", "-1"])
    if rng.random() < 0.15:
        q["min_inet_down_mbps"] = rng.choice(["100", "800", "801", "abc", "-5"])
    if rng.random() < 0.1:
        q["min_inet_up_mbps"] = rng.choice(["50", "2000"])
    if rng.random() < 0.15:
        q["min_disk_gb"] = rng.choice(["50", "200", "1001", "1.5"])
    if rng.random() < 0.15:
        q["min_duration_hours"] = rng.choice(["12", "720", "721", "x"])
    if rng.random() < 0.15:
        q["verified"] = rng.choice(["true", "false", "maybe"])
    if rng.random() < 0.15:
        q["datacenter"] = rng.choice(["true", "false"])
    if rng.random() < 0.3:
        q["location"] = rng.choice(LOCATION_TERMS)
    if rng.random() < 0.3:
        q["min_gpus"] = rng.choice(["1", "2", "3", "8", "0", "x", "2.5"])
    if rng.random() < 0.4:
        q["min_vram_gb"] = rng.choice(["16", "24", "48", "80", "81", "-1"])
    if rng.random() < 0.5:
        q["max_price"] = rng.choice(["0.35", "1", "1.2345", "2.47", "10", "0", "1.23456", "abc"])
    if rng.random() < 0.3:
        q["min_reliability"] = rng.choice(["0.95", "0.99", "0.1235", "0.12345", "0.9", "1", "2"])
    if rng.random() < 0.3:
        q["provider"] = rng.choice(["vastai", "tensordock", "nope"])
    if rng.random() < 0.3:
        q["min_cuda"] = rng.choice(
            ["12.4", "12.9", "12.10", "11", "12", "x", "١٢", "12.4.1", "11.8.0", "13", "12.x", "1234"]
        )
    if rng.random() < 0.7:
        q["sort"] = rng.choice(["", "price", "-price", "price_per_gpu", "vram_gb", "-vram_gb"])
        q["sort"] = rng.choice(
            [q["sort"], "reliability", "-reliability", "value", "-value", "bogus", "best_bet", "best_bet"]
        )
        extra = ["-price_per_gpu", "gpu_count", "-gpu_count", "inet_down", "-inet_down", "disk", "-disk"]
        q["sort"] = rng.choice([q["sort"], q["sort"], *extra, "max_duration", "-max_duration"])
    if rng.random() < 0.3:
        q["min_confidence"] = rng.choice(["0.3", "0.5", "0.7", "0.123", "0.3005", "0", "1", "-0.1", "x"])
    if rng.random() < 0.5:
        q["page"] = rng.choice(["1", "2", "3", "9", "0"])
    if rng.random() < 0.4:
        q["page_size"] = rng.choice(["1", "7", "20", "50", "501"])
    return q


def reference_api(query: dict) -> tuple[int, bytes | None]:
    """The answer of the code before the in-memory menu: the filter class over the database."""
    request = Request(RequestFactory().get("/api/v1/inventory", query))
    if not PageSizeForm(request.query_params).is_valid():
        return 400, None
    filterset = OfferFilterSet(request.query_params, queryset=Offer.objects.visible())
    if not filterset.is_valid():
        return 400, None
    paginator = Pagination()
    try:
        page = paginator.paginate_queryset(filterset.qs, request)
    except NotFound:
        return 404, None
    data = paginator.get_paginated_response(OfferSerializer(page, many=True).data).data
    return 200, JSONRenderer().render(data)


def reference_partial(query: dict, user) -> str:
    """The offers page's HTMX partial as the view rendered it from the database."""
    request = RequestFactory().get("/offers/", query, HTTP_HX_REQUEST="true")
    request.user, request.htmx = user, HtmxDetails(request)
    filterset = OfferFilterSet(request.GET, queryset=Offer.objects.visible())
    filterset.is_valid()
    # A refused filter is not applied (and said so); the valid ones are.
    page = Paginator(filterset.qs, 25).get_page(request.GET.get("page"))
    rest = request.GET.copy()
    rest.pop("page", None)
    form = filterset.form
    errors = filterset.errors.items()
    not_applied = [{"name": n, "label": form.fields[n].label, "errors": e} for n, e in errors]
    sorting = sort_headers(request.GET, form.cleaned_data.get("sort") or "price")
    context = {"filterset": filterset, "page": page, "query": rest.urlencode(), "not_applied": not_applied}
    context["sorting"] = sorting
    context["freshness"] = offers_freshness()
    return render_to_string("inventory/offer_list.html#offer-results", context, request)


@pytest.fixture
def asgi_get():
    """asgi_get(token, query) -> (status, body, answered by the fast path?) of the real app."""
    reached_django = []

    async def django_app(scope, receive, send):
        reached_django.append(scope["path"])
        await ASGIStaticFilesHandler(get_asgi_application())(scope, receive, send)

    app = fastpath.InventoryFastPath(django_app)

    def call(token: str, query: dict) -> tuple[int, bytes, bool]:
        before = len(reached_django)
        headers = [(b"host", b"testserver"), (b"authorization", f"Token {token}".encode())]
        communicator = HttpCommunicator(app, "GET", "/api/v1/inventory", headers=headers)
        communicator.scope["query_string"] = urlencode(query, doseq=True).encode()
        response = async_to_sync(communicator.get_response)(timeout=10)
        return response["status"], response["body"], len(reached_django) == before

    return call


def test_the_api_equals_the_filter_class_over_many_random_queries(offers, user, asgi_get):
    token = ApiToken.issue(user=user, name="parity")[1]
    rng = random.Random(2026)
    fast = 0
    with time_machine.travel(timezone.now(), tick=False):
        for _ in range(400):
            query = random_query(rng)
            status, body = reference_api(query)
            got_status, got_body, was_fast = asgi_get(token, query)
            assert got_status == status, query
            if status == 200:
                assert got_body == body, query
            fast += was_fast
    assert fast > 100  # many were answered in the ASGI layer, not only by Django's view


def test_the_htmx_partial_equals_the_database_rendering(offers, user, client):
    client.force_login(user)
    rng = random.Random(11)
    with time_machine.travel(timezone.now(), tick=False):
        for _ in range(120):
            query = random_query(rng)
            got = client.get("/offers/", query, HTTP_HX_REQUEST="true")
            assert got.status_code == 200
            assert got.content.decode() == reference_partial(query, user), query


def test_a_suppressed_offer_reappears_when_its_time_is_up_without_a_new_version(make_offer, api_client):
    now = timezone.now()
    offer = make_offer(hidden_until=now + timedelta(minutes=30))
    with time_machine.travel(now, tick=False) as traveller:
        assert api_client.get("/api/v1/inventory").json()["count"] == 0
        traveller.shift(timedelta(minutes=31))
        assert [r["id"] for r in api_client.get("/api/v1/inventory").json()["results"]] == [str(offer.pk)]


def test_a_suppression_shows_up_within_one_check(make_offer, api_client):
    offer = make_offer()
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        assert api_client.get("/api/v1/inventory").json()["count"] == 1
        Offer.objects.filter(pk=offer.pk).update(hidden_until=timezone.now() + timedelta(minutes=30))
        traveller.shift(timedelta(seconds=menu.CHECK_SECONDS))
        assert api_client.get("/api/v1/inventory").json()["count"] == 0


def test_bad_input_is_a_400_naming_the_parameter_and_changes_nothing(make_offer, api_client):
    make_offer()
    api_client.get("/api/v1/inventory")
    built = menu.holder.menu
    response = api_client.get("/api/v1/inventory", {"max_price": "cheap"})
    assert response.status_code == 400 and "max_price" in response.json()["errors"]
    assert menu.holder.menu is built and Offer.objects.count() == 1


def test_one_rebuild_per_new_version_while_the_others_serve_the_previous_menu(make_offer, monkeypatch):
    """The thundering herd: before, every in-flight request re-rendered after the expiry."""
    make_offer()
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        first = menu.holder.get(wait=True)
        ProviderFeed.objects.create(provider="vastai", last_attempt_at=timezone.now())  # a refresh
        traveller.shift(timedelta(seconds=menu.CHECK_SECONDS + 1))
        release, builds = threading.Event(), []
        real_build = menu.build_menu

        def slow_build(version):
            builds.append(version)
            release.wait(10)
            return real_build(version)

        monkeypatch.setattr(menu, "build_menu", slow_build)
        served, returned = [], threading.Condition()

        def ask(wait: bool) -> None:
            got = menu.holder.get(wait=wait)
            with returned:
                served.append(got)
                returned.notify_all()

        threads = [threading.Thread(target=ask, args=(w,)) for w in [True, False] * 8]
        for t in threads:
            t.start()
        with returned:  # all but (at most) the one rebuilding return at once, with the previous menu
            assert returned.wait_for(lambda: len(served) >= len(threads) - 1, timeout=10)
            assert served.count(first) >= len(threads) - 1
        release.set()
        for t in threads:
            t.join(10)
        menu.holder.wait_idle()
    assert len(builds) == 1
    assert menu.holder.menu is not first and menu.holder.menu.version == builds[0]


def test_the_htmx_partial_of_the_asgi_layer_equals_djangos_byte_for_byte(offers, user, client):
    """Every header and byte the same, whether the fast path or Django's view answers."""
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    reached_django = []

    async def django_app(scope, receive, send):
        reached_django.append(scope["path"])
        await ASGIStaticFilesHandler(get_asgi_application())(scope, receive, send)

    def get(app, query: dict, extra: list | None = None) -> dict:
        headers = [(b"host", b"testserver"), (b"cookie", cookie), (b"x-request-id", b"req-1")]
        headers += [(b"hx-request", b"true"), *(extra or [])]
        communicator = HttpCommunicator(app, "GET", "/offers/", headers=headers)
        communicator.scope["query_string"] = urlencode(query, doseq=True).encode()
        response = async_to_sync(communicator.get_response)(timeout=10)
        response["headers"] = sorted((k.decode().lower(), v.decode()) for k, v in response["headers"])
        return response

    fast_app = fastpath.InventoryFastPath(django_app)
    rng = random.Random(5)
    with time_machine.travel(timezone.now(), tick=False):
        get(fast_app, {})  # Django confirms the session
        answered_fast = 0
        for _ in range(80):
            query = random_query(rng)
            before = len(reached_django)
            fast = get(fast_app, query)
            answered_fast += len(reached_django) == before
            slow = get(django_app, query)
            assert (fast["status"], fast["headers"], fast["body"]) == (
                slow["status"],
                slow["headers"],
                slow["body"],
            ), query
        assert answered_fast > 40
        # A boosted request or a history restore wants the full page: Django renders the first
        # (no shell kept for this session yet), the fast path the second.
        before = len(reached_django)
        for extra in ([(b"hx-boosted", b"true")], [(b"hx-history-restore-request", b"true")]):
            assert b"<html" in get(fast_app, {}, extra)["body"]
        assert len(reached_django) == before + 1


def test_the_partial_needs_a_session_the_view_confirmed(offers, user, client):
    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    scope_headers = [
        (b"host", b"testserver"),
        (b"hx-request", b"true"),
        (b"cookie", f"sessionid={cookie}".encode()),
    ]
    reached_django = []

    async def django_app(scope, receive, send):
        reached_django.append(scope["path"])
        await ASGIStaticFilesHandler(get_asgi_application())(scope, receive, send)

    def get():
        communicator = HttpCommunicator(
            fastpath.InventoryFastPath(django_app), "GET", "/offers/", headers=scope_headers
        )
        return async_to_sync(communicator.get_response)(timeout=10)

    with time_machine.travel(timezone.now(), tick=False) as traveller:
        assert get()["status"] == 200 and reached_django == ["/offers/"]  # not yet confirmed: Django
        assert get()["status"] == 200 and reached_django == ["/offers/"]  # confirmed: the fast path
        client.logout()  # the session is gone from the database
        traveller.shift(timedelta(seconds=SESSION_CACHE_SECONDS + 1))
        response = get()
    # Django answers, sending htmx to the login page as a whole page (shopper/middleware.py).
    headers = {k.lower(): v for k, v in response["headers"]}
    assert len(reached_django) == 2
    assert response["status"] == 200 and headers[b"hx-redirect"] == b"/login/?next=/offers/"


# A CSRF secret as the csrftoken cookie holds it (32 letters and digits).
CSRF_SECRET = "Ab3" * 10 + "Zz"
MESSAGES_DELETED = 'messages=""'  # the shown message is gone from the browser
TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="([A-Za-z0-9]{64})"')


def _page_app_and_get(client, csrf_cookie: str | None = CSRF_SECRET):
    """(fast app, django app, get, the requests that reached Django) for the full offers page."""
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    if csrf_cookie:
        cookie += f"; csrftoken={csrf_cookie}"
    reached_django = []

    async def django_app(scope, receive, send):
        reached_django.append(scope["path"])
        await ASGIStaticFilesHandler(get_asgi_application())(scope, receive, send)

    def get(app, query: dict, extra: list | None = None, cookie: str = cookie) -> dict:
        headers = [(b"host", b"testserver"), (b"cookie", cookie.encode()), (b"x-request-id", b"req-1")]
        communicator = HttpCommunicator(app, "GET", "/offers/", headers=headers + (extra or []))
        communicator.scope["query_string"] = urlencode(query, doseq=True).encode()
        response = async_to_sync(communicator.get_response)(timeout=10)
        response["headers"] = sorted((k.decode().lower(), v.decode()) for k, v in response["headers"])
        return response

    return fastpath.InventoryFastPath(django_app), django_app, get, reached_django


def _without_token(body: bytes, secret: str) -> bytes:
    """The page with its CSRF token (masked anew per answer, by Django too) replaced, after
    checking that it is one valid token for ``secret``, in both places base.html shows it."""
    text = body.decode()
    tokens = TOKEN.findall(text)
    assert len(tokens) == 1 and _unmask_cipher_token(tokens[0]) == secret
    assert text.count(tokens[0]) == 2  # the logout form and htmx's X-CSRFToken header
    return text.replace(tokens[0], "TOKEN").encode()


def test_the_full_page_of_the_asgi_layer_equals_djangos_byte_for_byte(offers, user, client):
    """Every header and byte the same (the CSRF token apart, masked anew per answer) whether the
    fast path or Django's view answers, over many random queries; boosted and history-restore
    requests (which get the full page) too."""
    client.force_login(user)
    fast_app, django_app, get, reached_django = _page_app_and_get(client)
    rng = random.Random(11)
    with time_machine.travel(timezone.now(), tick=False):
        get(fast_app, {})  # Django renders the page: the shell is kept
        answered_fast = 0
        for i in range(80):
            query = random_query(rng)
            extra = [[], [(b"hx-request", b"true"), (b"hx-boosted", b"true")]][i % 2]
            before = len(reached_django)
            fast = get(fast_app, query, extra)
            answered_fast += len(reached_django) == before
            slow = get(django_app, query, extra)
            assert b"<html" in fast["body"] and b'id="offer-results"' in fast["body"]
            assert (fast["status"], fast["headers"], _without_token(fast["body"], CSRF_SECRET)) == (
                slow["status"],
                slow["headers"],
                _without_token(slow["body"], CSRF_SECRET),
            ), query
        assert answered_fast > 40


def test_the_full_page_needs_a_shell_django_rendered_moments_ago(offers, user, client):
    """A shell SHELL_SECONDS old sends one request to Django for a new one; a logged-out session
    is sent to the login page once its shell is SESSION_CACHE_SECONDS old (the partial's window)."""
    client.force_login(user)
    fast_app, _, get, reached_django = _page_app_and_get(client)
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        assert get(fast_app, {})["status"] == 200 and len(reached_django) == 1  # no shell yet: Django
        assert get(fast_app, {"gpu": "a100"})["status"] == 200 and len(reached_django) == 1
        traveller.shift(timedelta(seconds=SHELL_SECONDS + 0.1))
        assert get(fast_app, {})["status"] == 200 and len(reached_django) == 2  # due: Django renders
        assert get(fast_app, {})["status"] == 200 and len(reached_django) == 2  # the new one
        client.logout()  # the session is gone from the database
        assert get(fast_app, {})["status"] == 200 and len(reached_django) == 2  # within the window
        traveller.shift(timedelta(seconds=SHELL_SECONDS + 0.1))
        assert get(fast_app, {})["status"] == 302 and len(reached_django) == 3  # due: Django refuses
        assert get(fast_app, {})["status"] == 200 and len(reached_django) == 3  # still the window
        traveller.shift(timedelta(seconds=SESSION_CACHE_SECONDS - SHELL_SECONDS))
        responses = [get(fast_app, {}) for _ in range(3)]
    assert [r["status"] for r in responses] == [302] * 3 and len(reached_django) == 6  # all Django


def test_one_request_of_a_session_renders_a_due_shell_while_the_others_use_it(offers, user, client):
    """Eight clients of one session: when the shell is due, one request goes to Django, not all
    eight at once (before, every request until the new shell landed did: ~10 ms each)."""
    client.force_login(user)
    fast_app, _, get, _ = _page_app_and_get(client)
    reached_stub = []

    async def busy_django(scope, receive, send):  # Django still rendering: never answers here
        reached_stub.append(scope["path"])
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with time_machine.travel(timezone.now(), tick=False) as traveller:
        get(fast_app, {})  # Django renders: a shell
        traveller.shift(timedelta(seconds=SHELL_SECONDS + 0.1))
        stub_app = fastpath.InventoryFastPath(busy_django)
        statuses = [get(stub_app, {"sort": "-price"})["status"] for _ in range(8)]
    assert statuses == [503] + [200] * 7 and len(reached_stub) == 1


def test_pending_messages_are_shown_by_django_and_never_kept_in_a_shell(offers, user, client, rf):
    """A message (a rent or a stop leaves one before its redirect) is shown once, by Django: the
    fast path leaves any request with a messages cookie to it, and a page that showed one is
    never kept as a shell."""
    client.force_login(user)
    fast_app, _, get, reached_django = _page_app_and_get(client)
    with_message = f"sessionid={client.cookies['sessionid'].value}; messages={_messages_cookie(rf)}"
    with time_machine.travel(timezone.now(), tick=False):
        shown = get(fast_app, {}, cookie=with_message)
        assert b"Stopped, bye." in shown["body"] and len(reached_django) == 1
        assert ("set-cookie", MESSAGES_DELETED) in [(k, v.partition(";")[0]) for k, v in shown["headers"]]
        assert b"Stopped, bye." not in get(fast_app, {})["body"] and len(reached_django) == 2  # no shell kept
        assert get(fast_app, {})["status"] == 200 and len(reached_django) == 2  # now one: the fast path
        shown = get(fast_app, {"gpu": "h100"}, cookie=with_message)
        assert b"Stopped, bye." in shown["body"] and len(reached_django) == 3


def _messages_cookie(rf) -> str:
    """A messages cookie holding one message, as CookieStorage writes it."""
    from django.contrib.messages import constants
    from django.contrib.messages.storage.base import Message
    from django.contrib.messages.storage.cookie import CookieStorage
    from django.http import HttpResponse

    storage = CookieStorage(rf.get("/"))
    response = HttpResponse()
    storage._store([Message(constants.SUCCESS, "Stopped, bye.")], response)
    return response.cookies["messages"].value


def test_a_browser_without_a_csrf_cookie_gets_one_that_matches_the_page(offers, user, client):
    client.force_login(user)
    fast_app, _, get, reached_django = _page_app_and_get(client, csrf_cookie=None)
    with time_machine.travel(timezone.now(), tick=False):
        get(fast_app, {})
        response = get(fast_app, {"sort": "-price"})
    assert len(reached_django) == 1  # the second answer came from the fast path
    cookies = [v for k, v in response["headers"] if k == "set-cookie"]
    assert len(cookies) == 1 and cookies[0].startswith("csrftoken=")
    secret = cookies[0].partition("=")[2].partition(";")[0]
    _without_token(response["body"], secret)  # one valid token for that new secret
