"""`make bench`: measured figures, printed as one table (never asserted in tests).

- inventory API: 10,000 offers, GET /api/v1/inventory with a filter and a sort, 8 concurrent
  keep-alive clients on loopback against the real ASGI server (Daphne) — p50/p95 and requests/s.
- offer refresh: one full upsert of 10,000 offers (insert), and again (update + vanish pass).

Set BENCH_DATABASE_URL=postgres://… to run it on PostgreSQL (the default is a fresh SQLite file).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OFFERS = int(os.environ.get("BENCH_OFFERS", "10000"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
WEB_WORKERS = os.environ.get("BENCH_WEB_WORKERS", "2")
QUERY = "/api/v1/inventory?gpu=RTX&min_vram_gb=16&max_price=20&sort=-vram_gb"


def _setup_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(
        DEBUG="False",
        SECRET_KEY="bench-only-secret-key-0123456789abcdef",
        SHOPPER_TESTING="True",  # no HTTPS redirect on loopback
        ALLOWED_HOSTS="127.0.0.1,localhost",
        VASTAI_API_KEY="bench",
        TENSORDOCK_API_TOKEN="bench",
        LOG_LEVEL="WARNING",
        # The load test is one user hammering one endpoint on purpose.
        API_THROTTLE_USER="100000000/min",
        API_THROTTLE_ANON="100000000/min",
    )
    env["DATABASE_URL"] = os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ.update(env)
    return env


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


def _bench_refresh() -> dict:
    from django.utils import timezone

    from inventory.services import offers_upsert

    figures = {}
    for label, seed in (("insert", 1), ("update", 2)):
        offers = _fake_offers(OFFERS, seed)
        by_provider: dict[str, list] = {}
        for o in offers:
            by_provider.setdefault(o.provider, []).append(o)
        t0 = time.perf_counter()
        now = timezone.now()
        for provider, rows in by_provider.items():
            offers_upsert(provider=provider, offers=rows, fetched_at=now)
        figures[label] = time.perf_counter() - t0
    return figures


async def _client(host: str, port: int, request: bytes, stop_at: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            await writer.drain()
            length = 0
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("server closed the connection")
                if line in (b"\r\n", b"\n"):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line.startswith(b"HTTP/1.1 ") and not line.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected status: {line!r}")
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def _load(host: str, port: int, path: str, token: str, seconds: float, clients: int) -> list[float]:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Token {token}\r\n"
        f"Connection: keep-alive\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    await asyncio.gather(*[_client(host, port, request, stop_at, latencies) for _ in range(clients)])
    return latencies


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


def _bench_api(env: dict, token: str) -> dict:
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shopper.serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            WEB_WORKERS,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_port(port)
        asyncio.run(_load("127.0.0.1", port, QUERY, token, 2, CLIENTS))  # warm-up
        latencies = asyncio.run(_load("127.0.0.1", port, QUERY, token, SECONDS, CLIENTS))
    finally:
        server.terminate()
        server.wait(10)
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {"p50": q[49] * 1000, "p95": q[94] * 1000, "rps": len(latencies) / SECONDS, "n": len(latencies)}


class BenchCloud:
    """An in-memory provider listing for the reconcile benchmark (the provider's own listing time
    is not ours to measure; the sandbox pages 25 instances per call, as Vast does)."""

    name = "benchcloud"
    display_name = "Bench Cloud"
    listing: list = []

    def __init__(self, **kwargs):
        pass

    def supports(self, feature):
        return False

    def list_instances(self, label_prefix):
        return BenchCloud.listing

    def destroy_instance(self, instance_id):
        BenchCloud.listing = [i for i in BenchCloud.listing if i.instance_id != instance_id]

    def get_instance(self, instance_id):
        from inventory.providers.base import NotFound

        raise NotFound(instance_id)


def _bench_reconcile(instances: int = 5000, orphans: int = 50, ghosts: int = 50) -> dict:
    """One reconcile cycle over ``instances`` labelled instances: ``orphans`` without a rental
    (past their grace period) and ``ghosts`` live rentals missing from the listing."""
    import uuid
    from datetime import timedelta

    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from inventory import providers as registry
    from inventory.providers.base import InstanceData
    from sessions.models import Alert, AlertKind, Rental, Status
    from sessions.reconcile import reconcile

    registry.register_provider("benchcloud", f"{__name__}.BenchCloud")
    settings.BENCHCLOUD_API_KEY = "bench"
    user = Rental._meta.get_field("consumer").related_model.objects.get_or_create(username="bench")[0]
    now = timezone.now()
    rows, listing = [], []
    for i in range(instances - orphans + ghosts):
        rental_id = uuid.uuid4()
        rows.append(
            Rental(
                id=rental_id,
                consumer=user,
                provider="benchcloud",
                provider_offer_id="x",
                gpu_type="RTX 4090 24GB",
                gpu_count=1,
                price_per_hour=1,
                status=Status.ACTIVE,
                provider_instance_id=str(i),
                reservation_ends_at=now + timedelta(hours=1),
                hard_max_at=now + timedelta(hours=2),
                missing_count=1 if i < ghosts else 0,
            )
        )
        if i >= ghosts:
            listing.append(InstanceData("benchcloud", str(i), f"shopper-{rental_id}", "running"))
    for j in range(orphans):
        iid = f"orphan-{j}"
        listing.append(InstanceData("benchcloud", iid, f"shopper-{uuid.uuid4()}", "running"))
    Rental.objects.bulk_create(rows, batch_size=500)
    Alert.objects.bulk_create(
        [
            Alert(
                kind=AlertKind.ORPHAN,
                provider="benchcloud",
                provider_instance_id=f"orphan-{j}",
                message="bench",
                created_at=now - timedelta(hours=1),
            )
            for j in range(orphans)
        ]
    )
    BenchCloud.listing = listing
    with CaptureQueriesContext(connection) as ctx:
        t0 = time.perf_counter()
        result = reconcile(provider_name="benchcloud")
        seconds = time.perf_counter() - t0
    registry.unregister_provider("benchcloud")
    return {
        "seconds": seconds,
        "queries": len(ctx.captured_queries),
        "orphans": len(result.orphans_destroyed),
        "ghosts": len(result.ghosts),
        "instances": result.instances,
    }


def _bench_deadline_lag(rentals: int) -> dict:
    """Deadline-to-teardown lag from a small chaos run (real processes, faults on)."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "shopper.chaos",
            "--rentals",
            str(rentals),
            "--reservation-minutes",
            "1",
            "--report-lags",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    import json

    text = run.stdout
    report = json.loads(text[text.index("{") : text.rindex("}") + 1])
    return report


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = _setup_env(Path(tmp))
        import django

        sys.path.insert(0, str(ROOT))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopper.settings")
        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        from inventory.models import Offer
        from shopper.models import ApiToken

        db = "PostgreSQL" if "postgres" in env["DATABASE_URL"] else "SQLite"
        call_command("migrate", verbosity=0)
        Offer.objects.filter(provider_offer_id__startswith="bench-").delete()
        refresh = _bench_refresh()
        user, _ = get_user_model().objects.get_or_create(username="bench")
        _, token = ApiToken.issue(user=user, name="bench")
        from django.db import connections

        connections.close_all()
        api = _bench_api(env, token)
        from sessions.models import Alert, Rental

        clean = _bench_reconcile(orphans=0, ghosts=0)
        Rental.objects.filter(provider="benchcloud").delete()
        Alert.objects.filter(provider="benchcloud").delete()
        rec = _bench_reconcile()
        lag = _bench_deadline_lag(int(os.environ.get("BENCH_CHAOS_RENTALS", "20")))
        lags = lag.get("lags", [0])

        rows = [
            (f"offer refresh, {OFFERS:,} offers (insert), {db}", f"{refresh['insert']:.2f} s", "≤ 2 s"),
            (f"offer refresh, {OFFERS:,} offers (update), {db}", f"{refresh['update']:.2f} s", "≤ 2 s"),
            (f"inventory API p50, {OFFERS:,} offers, {CLIENTS} clients, {db}", f"{api['p50']:.1f} ms", ""),
            (
                f"inventory API p95, {OFFERS:,} offers, {CLIENTS} clients, {db}",
                f"{api['p95']:.1f} ms",
                "≤ 50 ms",
            ),
            (f"inventory API throughput, {db}", f"{api['rps']:.0f} req/s", "≥ 600 req/s"),
            (
                f"reconcile cycle, {rec['instances']:,} instances ({rec['orphans']} orphans, "
                f"{rec['ghosts']} ghosts), {db}",
                f"{rec['seconds']:.2f} s",
                "≤ 2 s",
            ),
            (
                "reconcile cycle, queries: clean listing / with 50+50",
                f"{clean['queries']} / {rec['queries']}",
                "not per instance",
            ),
            (
                f"deadline-to-teardown lag p50 / p95 / max ({len(lags)} deadlines)",
                f"{_pct(lags, 50):.1f}/{_pct(lags, 95):.1f}/{max(lags):.1f} s",
                "≤ 60 s",
            ),
            (
                f"chaos run: {lag['rentals']} rentals, leaks / not terminal",
                f"{lag['leaks']} / {lag['not_terminal']}",
                "0 / 0",
            ),
        ]
        width = max(len(r[0]) for r in rows)
        print(f"\n{'measure'.ljust(width)}  {'figure':>12}  target")
        print(f"{'-' * width}  {'-' * 12}  ------")
        for name, value, target in rows:
            print(f"{name.ljust(width)}  {value:>12}  {target}")
        print(f"\n(query: {QUERY}; {api['n']} requests over {SECONDS:.0f} s)")


if __name__ == "__main__":
    main()
