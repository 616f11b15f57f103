"""Bounded PostgreSQL connections under load, with the real web server (2 Daphne processes).

Under ASGI each request's sync code runs in a thread of its own and Django keeps a connection
per thread: with ``CONN_MAX_AGE`` every request that reached Django opened a new connection and
left it idle, until PostgreSQL refused more ("too many clients": HTTP 500). With the pool
(settings: ``OPTIONS["pool"]``) each process holds at most ``DB_POOL_MAX_SIZE``.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from tests.sandbox._util import wait_for
from tools.chaos import _free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
# One database per test process: two xdist workers running these tests at once must not
# create and drop the same one under each other.
DATABASE = f"shopper_menu_conns_{os.getpid()}"
WORKERS, POOL_MAX, REQUESTS, CLIENTS = 2, 3, 240, 8

SEED = """
import django, os
django.setup()
from decimal import Decimal
from django.contrib.auth import get_user_model
from django.utils import timezone
from inventory.models import Offer
from shopper.models import ApiToken
user = get_user_model().objects.create(username="poller")
offer = Offer.objects.create(provider="vastai", provider_offer_id="o1", gpu_type="RTX 4090 24GB",
    gpu_count=1, vram_gb=24, price_per_hour=Decimal("0.4"), price_per_gpu_hour=Decimal("0.4"),
    fetched_at=timezone.now())
print(offer.pk, ApiToken.issue(user=user, name="t")[1])
"""


def _connections(admin) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
    return admin.execute(sql, (DATABASE,)).fetchone()[0]


@pytest.fixture
def admin():
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
        yield conn
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def test_uncached_requests_under_load_stay_within_the_pool(admin, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CONN_MAX_AGE")}
    env.update(
        DJANGO_SETTINGS_MODULE="shopper.settings",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DATABASE}",
        DB_POOL_MAX_SIZE=str(POOL_MAX),
        DEBUG="False",
        SECRET_KEY="menu-conns-test-secret-0123456789abcdef",
        SHOPPER_TESTING="True",
        ALLOWED_HOSTS="127.0.0.1",
        CHANNEL_LAYER="memory",
        LOG_LEVEL="WARNING",
        API_THROTTLE_USER="100000000/min",
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    seeded = subprocess.run([sys.executable, "-c", SEED], cwd=ROOT, env=env, check=True, capture_output=True)
    offer_id, token = seeded.stdout.decode().split()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "shopper.serve", "--port", str(port), "--workers", str(WORKERS)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    statuses: list[int] = []
    peak = [0]
    try:

        def up():
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=2).connect()
                return True
            except OSError:
                return False

        wait_for(up, timeout=30)

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for _ in range(REQUESTS // CLIENTS):
                # The detail of one offer: token authentication and the offer read, both from the
                # database, every time (no cache answers it).
                conn.request(
                    "GET", f"/api/v1/inventory/{offer_id}", headers={"Authorization": f"Token {token}"}
                )
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
                peak[0] = max(peak[0], _connections(admin))

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        after = _connections(admin)
    finally:
        server.terminate()
        server.wait(10)
    assert statuses == [200] * REQUESTS
    # Before the pool: one new connection per request, left open (peak ≈ requests, then 500s).
    assert peak[0] <= WORKERS * POOL_MAX and after <= WORKERS * POOL_MAX


FORK = """
import multiprocessing
import django
django.setup()
from django.db import connection

def backend():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]

def child(queue):
    queue.put(backend())

parent = backend()  # the parent holds its connection while it forks, as a worker may
context = multiprocessing.get_context("fork")  # as django-q2 starts its task processes
queue = context.Queue()
process = context.Process(target=child, args=(queue,))
process.start()
print(parent, queue.get(timeout=30), backend())
process.join(30)
"""


def test_a_forked_worker_process_never_shares_its_parents_connection(admin):
    """Without the after-fork hook (inventory/apps.py) the child ran its queries on the parent's
    connection (the same server process): two processes on one socket."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        DJANGO_SETTINGS_MODULE="shopper.settings",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DATABASE}",
        SECRET_KEY="menu-conns-test-secret-0123456789abcdef",
        DEBUG="False",
    )
    done = subprocess.run([sys.executable, "-c", FORK], cwd=ROOT, env=env, check=True, capture_output=True)
    parent, child, parent_after = done.stdout.decode().split()
    assert child != parent and parent_after == parent
