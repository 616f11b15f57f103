"""`make bench`: every measured figure, printed as one table (never asserted in tests).

Each measurement runs in its own process, with its own fresh database and settings:

- inventory: offer refresh (insert, then update) and GET /api/v1/inventory with a filter and a sort,
  8 concurrent keep-alive clients on loopback against the real server (Daphne, 2 processes) —
  10,000 offers on SQLite and on PostgreSQL, 100,000 on PostgreSQL;
- provisioning: rentals created and provisioned against the sandbox cloud (``bench_provision.py``);
- reconcile: one cycle of the real Vast adapter over the sandbox's paged listing of 5,000
  instances (50 orphans, 50 ghosts), then a steady-state cycle;
- deadline-to-teardown lag: a chaos run (``chaos.py``: real processes, faults on);
- live updates: 200 open websockets (``bench_live.py``).

PostgreSQL runs use a database ``shopper_bench`` on BENCH_PG_URL (default
postgres://postgres@127.0.0.1:5432/postgres), dropped and created for each run and dropped at the
end; without a reachable server those rows say so. Sizes: BENCH_QUICK=1 shrinks everything for a
quick check; BENCH_OFFERS, BENCH_LARGE_OFFERS, BENCH_SECONDS, BENCH_RENTALS,
BENCH_PROVISION_WORKERS, BENCH_INSTANCES, BENCH_CHAOS_RENTALS, BENCH_SOCKETS, BENCH_LIVE_EVENTS
set one each; BENCH_ONLY=inventory,provision,reconcile,lag,live,field runs a subset.
- field: provisioning under the field-notes faults (``bench_provision.py --field``,
  BENCH_FIELD_RENTALS): success rate and time to active.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")


def _size(name: str, full: float, quick: float) -> float:
    return float(os.environ.get(name) or (quick if QUICK else full))


OFFERS = int(_size("BENCH_OFFERS", 10_000, 1_000))
LARGE_OFFERS = int(_size("BENCH_LARGE_OFFERS", 100_000, 2_000))
SECONDS = _size("BENCH_SECONDS", 10, 3)
RENTALS = int(_size("BENCH_RENTALS", 200, 20))
PROVISION_WORKERS = int(_size("BENCH_PROVISION_WORKERS", 8, 8))
INSTANCES = int(_size("BENCH_INSTANCES", 5_000, 500))
ORPHANS = GHOSTS = 50
CHAOS_RENTALS = int(_size("BENCH_CHAOS_RENTALS", 20, 5))
CHAOS_RESERVATION_MINUTES = _size("BENCH_CHAOS_RESERVATION_MINUTES", 1, 0.5)
SOCKETS = int(_size("BENCH_SOCKETS", 200, 20))
LIVE_EVENTS = int(_size("BENCH_LIVE_EVENTS", 100, 20))
CLIENTS = 8
WEB_WORKERS = os.environ.get("BENCH_WEB_WORKERS", "2")
QUERY = "/api/v1/inventory?gpu=RTX&min_vram_gb=16&max_price=20&sort=-vram_gb"
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
PG_DATABASE = "shopper_bench"
RESULT_MARK = "BENCH_RESULT "
PHASES = ("inventory", "provision", "reconcile", "lag", "live", "field")
FIELD_RENTALS = int(_size("BENCH_FIELD_RENTALS", 60, 16))


# --------------------------------------------------------------------------------------------
# Shared by the phases (bench_provision and bench_live import these)
# --------------------------------------------------------------------------------------------
def _setup_env(tmp: Path, database_url: str | None = None, **overrides: str | None) -> dict:
    """Settings of a phase process, also put in ``os.environ``: production-like (DEBUG off), its
    own database, no Redis (the task broker and channel layer stay in this database and process,
    so nothing leaks into a Redis other processes on this machine may be reading). An override of
    None removes the variable."""
    env = dict(os.environ)
    env.update(
        DEBUG="False",
        SECRET_KEY="bench-only-secret-key-0123456789abcdef",
        SHOPPER_TESTING="True",  # no HTTPS redirect on loopback
        ALLOWED_HOSTS="127.0.0.1,localhost",
        VASTAI_API_KEY="bench",
        TENSORDOCK_API_TOKEN="bench",
        LOG_LEVEL="WARNING",
        CHANNEL_LAYER="memory",
        Q_SYNC="False",
        # The load test is one user hammering one endpoint on purpose.
        API_THROTTLE_USER="100000000/min",
        API_THROTTLE_ANON="100000000/min",
    )
    env["DATABASE_URL"] = database_url or f"sqlite:///{tmp / 'bench.sqlite3'}"
    env.update({"REDIS_URL": None, **overrides})  # type: ignore[dict-item]
    for name in [k for k, v in env.items() if v is None]:
        del env[name]
        os.environ.pop(name, None)
    os.environ.update(env)
    return env


def _django_setup() -> None:
    import django

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopper.settings")
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _db_label(database_url: str | None) -> str:
    return "PostgreSQL" if (database_url or "").startswith("postgres") else "SQLite"


class HttpClock:
    """Wall time spent inside ``requests`` calls, per thread: the time the shopper waits on the
    provider (here the sandbox), to be told apart from its own work."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.calls: list[tuple[str, str, float]] = []  # (method, path, seconds), every thread

    def install(self) -> None:
        import requests

        original = requests.Session.request
        clock = self

        def timed(session, method, url, *args, **kwargs):
            started = time.perf_counter()
            try:
                return original(session, method, url, *args, **kwargs)
            finally:
                seconds = time.perf_counter() - started
                clock._local.seconds = clock.seconds + seconds
                clock._local.count = clock.count + 1
                clock.calls.append((str(method).upper(), urlsplit(str(url)).path, seconds))

        requests.Session.request = timed

    @property
    def seconds(self) -> float:
        return getattr(self._local, "seconds", 0.0)

    @property
    def count(self) -> int:
        return getattr(self._local, "count", 0)

    def reset(self) -> None:
        self._local.seconds, self._local.count = 0.0, 0
        self.calls.clear()


def _pct(values: list[float], p: int) -> float:
    values = sorted(values)
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("server did not start")


def _emit(result: dict) -> None:
    """The one line the orchestrator reads from a phase's output."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def _exit_on_sigterm() -> None:
    """SIGTERM (the orchestrator's timeout) unwinds like Ctrl-C: servers and sandboxes started
    in ``with`` and ``try`` blocks are stopped on the way out."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))


# --------------------------------------------------------------------------------------------
# Inventory: offer refresh and the inventory API
# --------------------------------------------------------------------------------------------
def _fake_offers(n: int, seed: int) -> list:
    from inventory.providers.base import OfferData

    rng = random.Random(seed)
    gpus = [
        ("RTX 4090 24GB", 24, 0.35),
        ("RTX 3090 24GB", 24, 0.2),
        ("A100 SXM4 80GB", 80, 1.1),
        ("H100 SXM 80GB", 80, 2.2),
        ("RTX A6000 48GB", 48, 0.45),
        ("L40S 48GB", 48, 0.8),
    ]
    out = []
    for i in range(n):
        name, vram, base = rng.choice(gpus)
        count = rng.choice([1, 1, 2, 4, 8])
        price = Decimal(str(round(base * count * rng.uniform(0.8, 1.4), 4)))
        out.append(
            OfferData(
                provider="vastai" if i % 3 else "tensordock",
                provider_offer_id=f"bench-{i}",
                gpu_type=name,
                gpu_count=count,
                vram_gb=vram,
                price_per_hour=price,
                location=rng.choice(["Oregon, US", "Texas, US", "DE"]),
                reliability=Decimal(str(round(rng.uniform(0.85, 0.999), 4))),
                cpu_cores=16,
                ram_gb=64,
                disk_gb=200,
            )
        )
    return out


def _bench_refresh(offers: int) -> dict:
    """One full upsert of ``offers`` offers (insert), then again with new prices (update)."""
    from django.utils import timezone

    from inventory.services import offers_upsert

    figures = {}
    for label, seed in (("insert", 1), ("update", 2)):
        by_provider: dict[str, list] = {}
        for o in _fake_offers(offers, seed):
            by_provider.setdefault(o.provider, []).append(o)
        started = time.perf_counter()
        now = timezone.now()
        for provider, rows in by_provider.items():
            offers_upsert(provider=provider, offers=rows, fetched_at=now)
        figures[label] = time.perf_counter() - started
    return figures


# The realistic mix: what people and scripts send. 15 GPU names or parts, VRAM, max price, sort,
# pages 1-3, and a cache-busting counter so every query string is new (no page cache can help).
MIX_GPUS = [
    "4090", "RTX 4090", "3090", "rtx", "A100", "a100 sxm4", "A100 SXM4 80GB", "H100", "h100 sxm",
    "A6000", "RTX A6000 48GB", "L40S", "80GB", "48gb", "24GB",
]  # fmt: skip
MIX_VRAM = ["", "", "16", "24", "48", "80"]
MIX_PRICE = ["", "", "1", "2.5", "5", "10", "20"]
MIX_SORTS = ["", "price", "-price", "price_per_gpu", "-vram_gb", "vram_gb", "-reliability"]
KINDS = ("same", "api", "partial", "page")  # same = one API query repeated (a polling script)


def _mix_query(rng: random.Random, n: int) -> str:
    q = [("gpu", rng.choice(MIX_GPUS))]
    for name, values in (("min_vram_gb", MIX_VRAM), ("max_price", MIX_PRICE), ("sort", MIX_SORTS)):
        value = rng.choice(values)
        if value:
            q.append((name, value))
    page = rng.choice([1, 1, 1, 2, 3])
    if page > 1:
        q.append(("page", str(page)))
    q.append(("_", str(n)))
    return "&".join(f"{k}={v.replace(' ', '+')}" for k, v in q)


def _request_for(kind: str, host: str, port: int, token: str, cookie: str, query: str) -> bytes:
    if kind in ("same", "api"):
        path, auth = f"/api/v1/inventory?{query}", f"Authorization: Token {token}\r\n"
    else:
        path, auth = f"/offers/?{query}", f"Cookie: {cookie}\r\n"
    if kind == "partial":
        auth += "HX-Request: true\r\n"
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}Connection: keep-alive\r\n\r\n".encode()


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.failures = 0  # connections lost or refused


async def _client(host: str, port: int, make, stop_at: float, tally: Tally) -> None:
    """One keep-alive client sending ``make(n)`` requests until ``stop_at``; every answer is
    read whole and its status counted (a 5xx is an error, never an exception that stops it)."""
    n = 0
    reader = writer = None
    while time.perf_counter() < stop_at:
        n += 1
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(make(n))
            await writer.drain()
            length, status = 0, 0
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("server closed the connection")
                if line in (b"\r\n", b"\n"):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line.startswith(b"HTTP/1.1 "):
                    status = int(line.split()[1])
            await reader.readexactly(length)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            tally.failures += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        tally.latencies.append(time.perf_counter() - started)
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
    if writer is not None:
        writer.close()


async def _load(host: str, port: int, kind: str, token: str, cookie: str, seconds: float) -> Tally:
    tally = Tally()
    stop_at = time.perf_counter() + seconds
    base = random.randrange(1 << 30)

    def maker(client: int):
        rng = random.Random(base + client)

        def make(n: int) -> bytes:
            query = QUERY.partition("?")[2] if kind == "same" else _mix_query(rng, base + client * 10**7 + n)
            return _request_for(kind, host, port, token, cookie, query)

        return make

    await asyncio.gather(*[_client(host, port, maker(c), stop_at, tally) for c in range(CLIENTS)])
    return tally


def _pg_sessions(database_url: str | None) -> int | None:
    """Connections ever opened to the bench database (pg_stat_database.sessions, PostgreSQL 14+)."""
    if not (database_url or "").startswith("postgres"):
        return None
    import psycopg

    time.sleep(1.2)  # backends flush their statistics at most once a second
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        sql = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        row = conn.execute(sql).fetchone()
    return int(row[0]) - 1  # not counting this one


def _refresh_now(offers: int, seed: int, done: dict) -> None:
    """A whole refresh as offers_refresh lands it: every offer re-priced, then a new menu version."""
    from django.db import connections
    from django.utils import timezone

    from inventory.models import ProviderFeed
    from inventory.services import offers_upsert

    started = time.perf_counter()
    now = timezone.now()
    by_provider: dict[str, list] = {}
    for o in _fake_offers(offers, seed):
        by_provider.setdefault(o.provider, []).append(o)
    for provider, rows in by_provider.items():
        offers_upsert(provider=provider, offers=rows, fetched_at=now)
        ProviderFeed.objects.update_or_create(provider=provider, defaults={"last_attempt_at": now})
    done["seconds"] = time.perf_counter() - started
    connections.close_all()


def _figures(tally: Tally, seconds: float, before: int | None, after: int | None) -> dict:
    ms = [x * 1000 for x in tally.latencies]
    return {
        "p50": _pct(ms, 50),
        "p95": _pct(ms, 95),
        "rps": len(ms) / seconds,
        "requests": len(ms),
        "errors": tally.failures + sum(c for s, c in tally.statuses.items() if s >= 500),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "conns_per_request": None if before is None else (after - before) / max(len(ms), 1),
    }


def _bench_api(env: dict, token: str, cookie: str, seconds: float, offers: int) -> dict:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "shopper.serve", "--port", str(port), "--workers", WEB_WORKERS],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    database_url = env.get("DATABASE_URL")
    figures: dict = {}
    try:
        _wait_port(port)
        for kind in KINDS:  # warm-up: every process builds its menu, logs in, renders once
            asyncio.run(_load("127.0.0.1", port, kind, token, cookie, 1))
        for kind in KINDS:
            before = _pg_sessions(database_url)
            tally = asyncio.run(_load("127.0.0.1", port, kind, token, cookie, seconds))
            figures[kind] = _figures(tally, seconds, before, _pg_sessions(database_url))
        # The realistic mix again while a whole refresh lands (a new version: every web process
        # rebuilds its menu, one thread each, serving the previous one meanwhile).
        done: dict = {}
        refresh = threading.Thread(target=_refresh_now, args=(offers, 3, done))
        refresh.start()
        tally = asyncio.run(_load("127.0.0.1", port, "api", token, cookie, seconds))
        refresh.join()
        figures["during_refresh"] = {**_figures(tally, seconds, None, None), "refresh": done.get("seconds")}
    finally:
        server.terminate()
        server.wait(10)
    return figures


def _session_cookie(user) -> str:
    """A logged-in session for the page and the partial, as a login would store it."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django.utils.crypto import get_random_string

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    # A browser sends back the csrftoken cookie its first page set (the logout form's token).
    csrf = f"{settings.CSRF_COOKIE_NAME}={get_random_string(32)}"
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}; {csrf}"


def phase_inventory(database_url: str, offers: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="shopper-bench-") as tmp:
        env = _setup_env(Path(tmp), database_url)
        _django_setup()
        from django.contrib.auth import get_user_model
        from django.db import connections

        from shopper.models import ApiToken

        refresh = _bench_refresh(offers)
        user, _ = get_user_model().objects.get_or_create(username="bench")
        user.set_password("bench-password-0123")
        user.save()
        _, token = ApiToken.issue(user=user, name="bench")
        cookie = _session_cookie(user)
        connections.close_all()
        api = _bench_api(env, token, cookie, seconds, offers)
    return {"offers": offers, "db": _db_label(database_url), **refresh, **api}


# --------------------------------------------------------------------------------------------
# Reconcile over a large listing served by the sandbox cloud
# --------------------------------------------------------------------------------------------
def _reconcile_cycle(clock: HttpClock) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sessions.reconcile import reconcile

    clock.reset()
    cpu = time.process_time()
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        result = reconcile(provider_name="vastai")
        wall = time.perf_counter() - started
    if result.aborted:
        raise SystemExit(f"reconcile aborted: {result.aborted}")
    listing = [
        s for method, path, s in clock.calls if method == "GET" and path.endswith("/api/v1/instances/")
    ]
    return {
        "wall": wall,
        "cpu": time.process_time() - cpu,
        "http_seconds": clock.seconds,
        "own": wall - clock.seconds,
        "calls": clock.count,
        "listing_calls": len(listing),
        "listing_seconds": sum(listing),
        "queries": len(queries.captured_queries),
        "instances": result.instances,
        "orphans": len(result.orphans_destroyed),
        "ghosts": len(result.ghosts),
    }


def phase_reconcile(database_url: str, instances: int, orphans: int, ghosts: int) -> dict:
    """``instances`` labelled instances in the sandbox's Vast listing: ``orphans`` of them without
    a rental (alerted an hour ago, so past their grace period: destroyed and verified), the rest
    with a live rental; plus ``ghosts`` live rentals already missed by one listing."""
    import uuid
    from datetime import timedelta

    from inventory.sandbox.testing import running_sandbox

    with tempfile.TemporaryDirectory(prefix="shopper-bench-") as tmp, running_sandbox(Path(tmp)) as sandbox:
        _setup_env(
            Path(tmp), database_url, VASTAI_API_URL=sandbox.vastai_url, TENSORDOCK_API_TOKEN=None,
            PROVIDER_MIN_INTERVAL_SECONDS="0", SHOPPER_SANDBOX="True",
        )  # fmt: skip
        _django_setup()
        from django.contrib.auth import get_user_model
        from django.utils import timezone

        from sessions.deployment import deployment_id, make_label
        from sessions.models import Alert, AlertKind, Rental, Status

        rental_ids = [uuid.uuid4() for _ in range(instances - orphans)]
        me = deployment_id()  # reconcile acts only on this deployment's labels
        labels = [make_label(me, r) for r in rental_ids + [uuid.uuid4() for _ in range(orphans)]]
        started = time.perf_counter()
        created = sandbox.add_listing_only("vastai", labels)
        setup_seconds = time.perf_counter() - started
        user, _ = get_user_model().objects.get_or_create(username="bench")
        now = timezone.now()

        def rental(rental_id, instance_id: str, missing_count: int) -> Rental:
            return Rental(
                id=rental_id, consumer=user, provider="vastai", provider_offer_id="bench",
                gpu_type="RTX 4090 24GB", gpu_count=1, price_per_hour=1, status=Status.ACTIVE,
                provider_instance_id=instance_id, missing_count=missing_count, active_since=now,
                created_at=now - timedelta(hours=1),  # settled: young rentals are never ghosts
                reservation_ends_at=now + timedelta(hours=1), hard_max_at=now + timedelta(hours=2),
            )  # fmt: skip

        rows = [rental(r, c["id"], 0) for r, c in zip(rental_ids, created, strict=False)]
        rows += [rental(uuid.uuid4(), f"9{i:08d}", 1) for i in range(ghosts)]  # never in the listing
        Rental.objects.bulk_create(rows, batch_size=500)
        Alert.objects.bulk_create(
            Alert(
                kind=AlertKind.ORPHAN,
                provider="vastai",
                provider_instance_id=c["id"],
                message="bench",
                created_at=now - timedelta(hours=1),
            )
            for c in created[len(rental_ids) :]
        )
        clock = HttpClock()
        clock.install()
        with_work = _reconcile_cycle(clock)
        steady = _reconcile_cycle(clock)
        left = len(sandbox.instances())
    return {
        "db": _db_label(database_url),
        "setup_seconds": setup_seconds,
        "with_work": with_work,
        "steady": steady,
        "left": left,
    }


# --------------------------------------------------------------------------------------------
# The orchestrator: runs each phase in its own process and prints the table
# --------------------------------------------------------------------------------------------
def _pg_fresh_database() -> str | None:
    """Drop and create ``shopper_bench``; its URL, or None if PostgreSQL is not reachable."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {PG_DATABASE}")
    except Exception as exc:
        print(f"  PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}", file=sys.stderr)
        return None
    parts = urlsplit(PG_ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{PG_DATABASE}"))


def _pg_drop_database() -> None:
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")


class Runner:
    """Runs phase processes in their own process group (a timeout stops the servers they
    started too) and keeps their logs."""

    def __init__(self) -> None:
        self.log_dir = Path(tempfile.mkdtemp(prefix="shopper-bench-logs-"))
        self.failed: list[str] = []
        self.count = 0

    def run(self, title: str, argv: list[str], timeout: float, *, any_exit: bool = False) -> str | None:
        """The phase's stdout, or None if it failed (its log is kept). ``any_exit``: a non-zero
        exit still has a report to read (the chaos run exits 1 when a bound breaks)."""
        print(f"bench: {title} ...", file=sys.stderr, flush=True)
        self.count += 1
        log = self.log_dir / f"{self.count:02d}-{title.split(',')[0].replace(' ', '-')}.log"
        started = time.monotonic()
        with log.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                start_new_session=True,
            )  # fmt: skip
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._stop(proc)
                self.failed.append(f"{title}: stopped after {timeout:.0f} s; log {log}")
                return None
            except BaseException:  # Ctrl-C: stop the phase and the servers it started
                self._stop(proc)
                raise
        print(f"bench:   done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        if proc.returncode != 0 and not any_exit:
            self.failed.append(f"{title}: exit {proc.returncode}; log {log}")
            return None
        return out

    def phase(self, title: str, argv: list[str], timeout: float) -> dict | None:
        out = self.run(title, argv, timeout)
        for line in (out or "").splitlines():
            if line.startswith(RESULT_MARK):
                return json.loads(line[len(RESULT_MARK) :])
        if out is not None:
            self.failed.append(f"{title}: no result line")
        return None

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def cleanup(self) -> None:
        if not self.failed:
            shutil.rmtree(self.log_dir, ignore_errors=True)


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "no")


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def _failed_row(what: str, note: str = "failed (see the end)") -> tuple:
    return (what, note, "", "—")


KIND_LABELS = {
    "api": "realistic mix, API",
    "partial": "realistic mix, HTMX partial",
    "page": "realistic mix, full page",
    "same": "same query repeated, API",
}


def _inventory_rows(results: list[tuple[str, int, dict | None]]) -> list[tuple]:
    rows = []
    for db, offers, r in results:
        at = f"{_k(offers)} offers, {db}"
        if r is None or "api" not in r:
            rows.append(_failed_row(f"menu, {at}", (r or {}).get("skipped", "failed (see the end)")))
            continue
        small = offers <= OFFERS  # targets: 10k on both databases, 100k on PostgreSQL
        for kind in ("api", "partial", "page", "same"):
            f = r[kind]
            if kind == "page":
                rps_target, p95_target = (500, None) if small else (None, None)
            elif kind == "same":
                rps_target, p95_target = None, None
            else:
                rps_target, p95_target = (1000, 50) if small else (500, 100)
            target = " and ".join(
                ([f"≥ {rps_target:,} req/s"] if rps_target else [])
                + ([f"p95 ≤ {p95_target} ms"] if p95_target else [])
            )
            met = None
            if rps_target:
                met = f["rps"] >= rps_target and (p95_target is None or f["p95"] <= p95_target)
            rows.append(
                (
                    f"menu {KIND_LABELS[kind]}, {at}: req/s; p50 / p95",
                    f"{f['rps']:,.0f}; {_ms(f['p50'])} / {_ms(f['p95'])} ms",
                    target or "—",
                    _met(met),
                )
            )
        errors = sum(r[k]["errors"] for k in KINDS)
        conns = [r[k]["conns_per_request"] for k in KINDS if r[k]["conns_per_request"] is not None]
        not_found = sum(r[k]["statuses"].get("404", 0) for k in KINDS)
        rows.append(
            (
                "  errors (5xx, lost connections), all four"
                + ("; DB connections / request" if conns else ""),
                f"{errors}"
                + (f"; {max(conns):.3f}" if conns else "")
                + (f" ({not_found} × 404¹)" if not_found else ""),
                "0" + ("; ≤ 0.01" if conns else ""),
                _met(errors == 0 and (not conns or max(conns) <= 0.01)),
            )
        )
        d = r["during_refresh"]
        refresh_note = f"refresh {d['refresh']:.1f} s" if d.get("refresh") else "refresh did not finish"
        rows.append(
            (
                f"  realistic mix, API, while a refresh lands ({refresh_note}): req/s; p95; errors",
                f"{d['rps']:,.0f}; {_ms(d['p95'])} ms; {d['errors']}",
                "answers throughout",
                _met(d["errors"] == 0 and d["requests"] > 0),
            )
        )
        rows.append(
            (
                f"offer refresh insert / update, {at}",
                f"{r['insert']:.2f} / {r['update']:.2f} s",
                "≤ 2 s" if small else ("≤ 5 s" if offers >= 100_000 else "—"),
                _met(max(r["insert"], r["update"]) <= (2 if small else 5)),
            )
        )
    return rows


def _provision_rows(p: dict | None) -> list[tuple]:
    if p is None:
        return [_failed_row(f"provisioning {RENTALS} rentals against the sandbox")]
    n = p["rentals"]
    refused = f" (+{p['offers_refused']} refused ¹)" if p["offers_refused"] else ""
    return [
        (
            f"provisioning {n} rentals, {p['workers']} workers, {p['db']}: active",
            f"{p['active']} / {n}{refused}",
            f"{n} / {n}",
            _met(p["active"] == n),
        ),
        ("  rentals per minute, first create → last active", f"{p['per_minute']:.0f} /min", "—", "—"),
        (
            "  shopper's own overhead per rental, mean / p95 ²",
            f"{_ms(p['own_ms_mean'])} / {_ms(p['own_ms_p95'])} ms",
            "—",
            "—",
        ),
        ("  shopper's CPU time per rental ²", f"{_ms(p['cpu_ms_per_rental'])} ms", "—", "—"),
        (
            "  waiting on the sandbox per rental: HTTP (calls) / SSH",
            f"{_ms(p['http_ms_mean'])} ms ({p['http_calls_mean']:.1f}) / {_ms(p['ssh_ms_mean'])} ms",
            "—",
            "—",
        ),
        (
            "  teardown of all: time; instances left in the sandbox",
            f"{p['teardown_seconds']:.1f} s; {p['left']} left",
            "0 left",
            _met(p["left"] == 0 and p["live_after_teardown"] == 0),
        ),
    ]


def _reconcile_rows(r: dict | None) -> list[tuple]:
    if r is None:
        return [_failed_row(f"reconcile, {INSTANCES:,} instances")]
    w, s = r["with_work"], r["steady"]
    return [
        (
            f"reconcile, {w['instances']:,} instances (+{w['orphans']} orphans, {w['ghosts']} ghosts), "
            f"{r['db']}: own time ³",
            f"{w['own']:.2f} s",
            "≤ 2 s",
            _met(w["own"] <= 2),
        ),
        (
            "  wall time / of which waiting on the sandbox",
            f"{w['wall']:.1f} / {w['http_seconds']:.1f} s",
            "—",
            "—",
        ),
        (
            "  HTTP calls: listing pages + destroy/verify",
            f"{w['listing_calls']} + {w['calls'] - w['listing_calls']}",
            "—",
            "—",
        ),
        (
            f"reconcile, steady state ({s['instances']:,}, nothing to do): own / wall",
            f"{s['own']:.2f} / {s['wall']:.2f} s",
            "≤ 2 s",
            _met(s["own"] <= 2),
        ),
        (
            "  DB queries per cycle: with the 50 + 50 / steady",
            f"{w['queries']} / {s['queries']}",
            "not per instance",
            _met(s["queries"] <= 20),
        ),
    ]


def _lag_rows(lag: dict | None) -> list[tuple]:
    if lag is None:
        return [_failed_row("deadline-to-teardown lag (chaos run)")]
    lags = lag.get("lags") or [0.0]
    return [
        (
            f"deadline-to-teardown lag p50 / p95 / max, {len(lag.get('lags', []))} deadlines ⁴",
            f"{_pct(lags, 50):.1f} / {_pct(lags, 95):.1f} / {max(lags):.1f} s",
            "≤ 60 s",
            _met(max(lags) <= 60),
        ),
        (
            f"  chaos run of {lag['rentals']}: instances leaked / not terminal",
            f"{lag['leaks']} / {lag['not_terminal']}",
            "0 / 0",
            _met(lag["leaks"] == 0 and lag["not_terminal"] == 0),
        ),
    ]


def _live_rows(live: dict | None) -> list[tuple]:
    if live is None:
        return [_failed_row(f"live update latency, {SOCKETS} websockets")]
    return [
        (
            f"live update latency p50 / p95 / max, {live['sockets']} websockets ⁵",
            f"{_ms(live['p50'])} / {_ms(live['p95'])} / {_ms(live['max'])} ms",
            "p95 ≤ 2 s",
            _met(live["p95"] <= 2000),
        ),
        (
            "  updates delivered / lost",
            f"{live['deliveries']} / {live['lost']}",
            "0 lost",
            _met(live["lost"] == 0),
        ),
    ]


# --------------------------------------------------------------------------------------------
# Provisioning under the field-notes faults (bench_provision.py --field)
# --------------------------------------------------------------------------------------------
def _field_phase(runner, failover: bool) -> dict | None:
    argv = ["-m", "tools.bench_provision", "--field", "--rentals", str(FIELD_RENTALS)]
    argv += ["--workers", str(PROVISION_WORKERS)] + ([] if failover else ["--no-failover"])
    what = "with" if failover else "without"
    return runner.phase(
        f"provisioning {FIELD_RENTALS} rentals under field faults, {what} failover", argv, timeout=1200
    )


def _field_rows(field: dict | None, failover: bool) -> list[tuple]:
    what = "with failover" if failover else "without failover"
    if field is None:
        return [_failed_row(f"provisioning under field-notes faults, {what}, {FIELD_RENTALS} rentals")]
    rows = [
        (
            f"rentals asked for → active under field-notes faults, {what} ⁶",
            f"{field['attempts']} → {field['active']} ({field['success_rate']:.0%})",
            ">= 95 %" if failover else "",
            _met(field["success_rate"] >= 0.95) if failover else "—",
        ),
        (
            "  time to active p50 / p95" + (f" ({field['failovers']} failovers)" if failover else ""),
            f"{field['to_active_p50_s']:.1f} / {field['to_active_p95_s']:.1f} s",
            "",
            "—",
        ),
        (
            "  instances left / rentals live after teardown",
            f"{field['left']} / {field['live_after_teardown']}",
            "0 / 0",
            _met(field["left"] == 0 and field["live_after_teardown"] == 0),
        ),
    ]
    return rows


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _print_table(rows: list[tuple], footnotes: list[str]) -> None:
    width = max(len(r[0]) for r in rows)
    fig = max(len("figure"), *(len(r[1]) for r in rows))
    tgt = max(len("target"), *(len(r[2]) for r in rows))
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print()
    print(
        f"Cloud GPU Shopper benchmarks — {now} — {os.cpu_count()} cores ({_cpu_model()}), "
        f"Python {platform.python_version()}" + (" — QUICK sizes (BENCH_QUICK=1)" if QUICK else "")
    )
    print()
    print(f"{'measure'.ljust(width)}  {'figure'.rjust(fig)}  {'target'.ljust(tgt)}  met?")
    print(f"{'-' * width}  {'-' * fig}  {'-' * tgt}  ----")
    for name, value, target, met in rows:
        print(f"{name.ljust(width)}  {value.rjust(fig)}  {(target or '—').ljust(tgt)}  {met}")
    print()
    for note in footnotes:
        print(textwrap.fill(note, width=110, subsequent_indent="  "))


def _footnotes(only: set[str], reconcile: dict | None) -> list[str]:
    notes = []
    if "inventory" in only:
        notes.append(
            f"Menu: {CLIENTS} concurrent keep-alive clients for {SECONDS:g} s per row after a warm-up, "
            f"against `shopper.serve --workers {WEB_WORKERS}` (Daphne), DEBUG off, load generator on the "
            "same cores. 'Realistic mix': every request a new query string, a random combination of 15 GPU "
            "names or parts, min VRAM, max price, sort and page 1–3 (plus a counter, so no page cache can "
            "answer it); the API with a token, the HTMX partial and the full offers page with a session. "
            f"'Same query': GET {QUERY} repeated, as a polling script asks it. All are answered from the "
            "in-memory menu of each web process (inventory/menu.py; the API in the ASGI layer, "
            "inventory/fastpath.py). ¹ A 404 is the API's answer to a page past the end of a narrow "
            "filter, not an error. DB connections per request = pg_stat_database.sessions opened during "
            "the run / requests. Refresh = offers_upsert of the whole menu."
        )
    if "provision" in only:
        notes += [
            "¹ Offers the provider refused at create (sandbox TensorDock locations without a free public "
            "IP): the rental fails cleanly, nothing is created and the offer is hidden; the worker takes "
            "another, as a user would. Not counted in the per-rental figures.",
            "² The real services (rental_create, then rental_provision as a worker runs it, with a "
            "generated key and a real SSH login) in worker threads of one process; provider pacing off "
            "(the sandbox is local). Own overhead = wall time of create + provision minus the time inside "
            "HTTP calls to the sandbox, the SSH login check and deliberate waits: the shopper's code and "
            "database, including queueing for this machine's cores behind the other workers. CPU time = "
            "this process's CPU during provisioning / rentals (a PostgreSQL server's CPU is not in it). "
            "Node start-up scripts (the agent) are left out: they run on the GPU machine.",
        ]
    if "reconcile" in only:
        pages = reconcile["with_work"]["listing_calls"] if reconcile else INSTANCES // 25
        notes.append(
            "³ Own time = reconcile() wall time minus the time inside HTTP calls (the sandbox, a Python "
            "process on the same two cores, serving its pages and destroying orphans). Provider pacing is "
            f"off: Vast lists 25 instances per call, and {pages} pages would take about {pages} s at the "
            "adapter's real pacing of 1 call/s."
        )
    if "lag" in only:
        notes.append(
            "⁴ `tools.chaos`: real web, worker and safety-loop processes, faults injected and processes "
            f"killed, {CHAOS_RESERVATION_MINUTES:g} min reservations, SQLite."
        )
    if "field" in only:
        notes.append(
            "⁶ `bench_provision --field [--no-failover]`: one rental per offer asked for, rent to active "
            "(without failover every failed attempt counts; with it a rental whose offer fails moves on "
            "to a comparable one, sessions/failover.py), under "
            "make run's fault mix (TensorDock locations without public IPs and stale ones, Vast loads of "
            "5-40 s, Vast asks lingering in search, 4.5 req/s Vast rate limit) plus 5 % TensorDock 401s "
            "on create and 3 % Vast loads that never finish / containers that never start; the sandbox's "
            "boot takes 2 s; SQLite; failures end failed (nothing created) or destroyed."
        )
    if "live" in only:
        notes.append(
            "⁵ A RentalEvent committed by another process → its fragment received on the websocket; 2 web "
            "processes, in-memory channel layer, SQLite."
        )
    return notes


def orchestrate(only: set[str]) -> int:
    runner = Runner()
    me = ["-m", "tools.bench", "--phase"]
    rows: list[tuple] = []
    reconcile = None
    pg_missing = False
    started = time.monotonic()

    def postgres() -> str | None:
        nonlocal pg_missing
        url = _pg_fresh_database()
        pg_missing = pg_missing or url is None
        return url

    try:
        if "inventory" in only:
            inventory = []
            for db, offers in (("SQLite", OFFERS), ("PostgreSQL", OFFERS), ("PostgreSQL", LARGE_OFFERS)):
                url = postgres() if db == "PostgreSQL" else "sqlite"
                if url is None:
                    inventory.append((db, offers, {"skipped": "PostgreSQL not reachable"}))
                    continue
                argv = [*me, "inventory", "--database-url", url, "--offers", str(offers)]
                title = f"inventory, {offers:,} offers, {db}"
                inventory.append((db, offers, runner.phase(title, argv, timeout=600)))
            rows += _inventory_rows(inventory)
        if "provision" in only:
            url = postgres() or "sqlite"
            argv = ["-m", "tools.bench_provision", "--database-url", url, "--rentals", str(RENTALS)]
            argv += ["--workers", str(PROVISION_WORKERS)]
            rows += _provision_rows(runner.phase(f"provisioning {RENTALS} rentals", argv, timeout=900))
        if "reconcile" in only:
            url = postgres() or "sqlite"
            argv = [*me, "reconcile", "--database-url", url, "--instances", str(INSTANCES)]
            reconcile = runner.phase(f"reconcile, {INSTANCES:,} instances", argv, timeout=900)
            rows += _reconcile_rows(reconcile)
        if "lag" in only:
            argv = ["-m", "tools.chaos", "--rentals", str(CHAOS_RENTALS), "--report-lags"]
            argv += ["--reservation-minutes", str(CHAOS_RESERVATION_MINUTES)]
            title = f"deadline lag, chaos run of {CHAOS_RENTALS} rentals"
            out = runner.run(title, argv, timeout=900, any_exit=True)
            lag = None
            if out and "{" in out:
                lag, _ = json.JSONDecoder().raw_decode(out, out.index("{"))
            elif out is not None:
                runner.failed.append(f"{title}: no report; log in {runner.log_dir}")
            rows += _lag_rows(lag)
        if "live" in only:
            argv = ["-m", "tools.bench_live", "--sockets", str(SOCKETS), "--events", str(LIVE_EVENTS)]
            argv += ["--interval", "0.1", "--json"]
            rows += _live_rows(runner.phase(f"live updates, {SOCKETS} websockets", argv, timeout=600))
        if "field" in only:
            rows += _field_rows(_field_phase(runner, failover=False), failover=False)
            rows += _field_rows(_field_phase(runner, failover=True), failover=True)
    finally:
        _pg_drop_database()
    footnotes = _footnotes(only, reconcile)
    footnotes.append(
        f"Total bench time {time.monotonic() - started:.0f} s."
        + (" PostgreSQL not reachable: its rows are skipped, the rest ran on SQLite." if pg_missing else "")
    )
    if runner.failed:
        footnotes.append("FAILED: " + "; ".join(runner.failed))
    _print_table(rows, footnotes)
    runner.cleanup()
    return 1 if runner.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("inventory", "reconcile"), help="(internal) run one phase")
    parser.add_argument("--database-url", default="sqlite")
    parser.add_argument("--offers", type=int, default=OFFERS)
    parser.add_argument("--instances", type=int, default=INSTANCES)
    args = parser.parse_args(argv)
    database_url = None if args.database_url == "sqlite" else args.database_url
    if args.phase:
        _exit_on_sigterm()
    if args.phase == "inventory":
        _emit(phase_inventory(database_url, args.offers, SECONDS))
        return 0
    if args.phase == "reconcile":
        _emit(phase_reconcile(database_url, args.instances, ORPHANS, GHOSTS))
        return 0
    only = {p.strip() for p in os.environ.get("BENCH_ONLY", ",".join(PHASES)).split(",") if p.strip()}
    unknown = only - set(PHASES)
    if unknown:
        raise SystemExit(f"BENCH_ONLY: unknown {', '.join(sorted(unknown))} (known: {', '.join(PHASES)})")
    return orchestrate(only)


if __name__ == "__main__":
    sys.exit(main())
