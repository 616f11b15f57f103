"""Live-update latency: RentalEvent written -> fragment received by an open websocket.

Starts the real server (``python -m shopper.serve --workers 2``, Daphne, in-memory channel layer)
on a temporary SQLite file, opens N websockets (each watching one rental's page, as the detail
page does), writes events from a writer thread in this process (a separate process from the
servers, as the worker is) and prints p50/p95/max delivery latency. Not a test: figures only.

    .venv/bin/python -m tools.bench_live [--sockets 50] [--events 40] [--interval 0.25] [--json]

``make bench`` runs it (``tools/bench.py``) with 200 sockets and puts the figures in its table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.typing import Origin

from tools.bench import ROOT, _emit, _exit_on_sigterm, _free_port, _pct, _setup_env, _wait_port


def _prepare(sockets: int) -> tuple[list[str], list]:
    """Users (about 5 sockets each), their login cookies and one rental per socket."""
    from datetime import timedelta
    from decimal import Decimal

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from sessions.models import Rental, Status

    call_command("migrate", verbosity=0)
    now = timezone.now()
    cookies, rentals = [], []
    for i in range(sockets):
        if i % 5 == 0:
            user = get_user_model().objects.create_user(f"live{i}", password="bench-password-123")
            client = Client()
            client.force_login(user)
            cookie = client.cookies["sessionid"].value
        cookies.append(cookie)
        rentals.append(
            Rental.objects.create(
                consumer=user,
                provider="vastai",
                provider_offer_id=f"bench-{i}",
                gpu_type="RTX 4090 24GB",
                gpu_count=1,
                price_per_hour=Decimal("0.4000"),
                status=Status.ACTIVE,
                active_since=now,
                reservation_ends_at=now + timedelta(hours=2),
                hard_max_at=now + timedelta(hours=12),
            )
        )
    return cookies, rentals


async def _watch(port: int, cookie: str, rental_id, received: dict, ready: asyncio.Event) -> None:
    # No compression offered: the browser's live.js socket is what is measured, not deflate.
    async with connect(
        f"ws://127.0.0.1:{port}/ws/rentals/?rental={rental_id}",
        origin=Origin(f"http://127.0.0.1:{port}"),
        additional_headers={"Cookie": f"sessionid={cookie}"},
        compression=None,
        open_timeout=30,
    ) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello", hello
        ready.set()
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] == "rental.changed" and msg["html"]:
                received.setdefault((str(rental_id), msg["event"]), time.monotonic())


def _writer(rentals: list, events: int, interval: float, written: dict) -> None:
    from django.db import connections

    from sessions import services
    from sessions.models import EventKind

    try:
        for i in range(events):
            rental = rentals[i % len(rentals)]
            event = services.rental_event(rental, EventKind.INFO, f"bench event {i}")
            written[(str(rental.pk), event.pk)] = time.monotonic()  # committed (autocommit)
            time.sleep(interval)
    finally:
        connections.close_all()


async def measure_live_latency(port: int, cookies: list[str], rentals: list, events: int, interval: float):
    received: dict = {}
    written: dict = {}
    readies = [asyncio.Event() for _ in rentals]
    tasks = [
        asyncio.create_task(_watch(port, c, r.pk, received, ready))
        for c, r, ready in zip(cookies, rentals, readies, strict=True)
    ]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
    writer = threading.Thread(target=_writer, args=(rentals, events, interval, written))
    writer.start()
    while writer.is_alive():
        await asyncio.sleep(0.1)
    await asyncio.sleep(3)  # let the last pushes arrive
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [received[k] - t for k, t in written.items() if k in received]
    return latencies, len(written) - len(latencies)


def run(sockets: int, events: int, interval: float, workers: str = "2") -> dict:
    """Start the servers, measure, stop them; the figures in milliseconds."""
    with tempfile.TemporaryDirectory() as tmp:
        env = _setup_env(Path(tmp), CHANNEL_LAYER="memory")
        import django

        sys.path.insert(0, str(ROOT))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopper.settings")
        django.setup()
        from django.db import connections

        cookies, rentals = _prepare(sockets)
        connections.close_all()
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "shopper.serve", "--port", str(port), "--workers", workers],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_port(port)
            latencies, lost = asyncio.run(measure_live_latency(port, cookies, rentals, events, interval))
        finally:
            server.terminate()
            server.wait(10)
    ms = [x * 1000 for x in latencies]
    return {
        "sockets": sockets,
        "workers": int(workers),
        "deliveries": len(ms),
        "lost": lost,
        "p50": _pct(ms, 50),
        "p95": _pct(ms, 95),
        "max": max(ms, default=0.0),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--json", action="store_true", help="print one BENCH_RESULT line (for make bench)")
    args = parser.parse_args(argv)
    _exit_on_sigterm()
    result = run(args.sockets, args.events, args.interval, args.workers)
    if args.json:
        _emit(result)
        return
    print(
        f"live updates, {args.sockets} sockets, {args.workers} web processes, SQLite, no Redis: "
        f"{result['deliveries']} deliveries, lost {result['lost']}, p50 {result['p50']:.0f} ms, "
        f"p95 {result['p95']:.0f} ms, max {result['max']:.0f} ms (target: within 2000 ms)"
    )


if __name__ == "__main__":
    main()
