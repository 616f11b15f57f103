"""Provisioning benchmark: N rentals against the sandbox cloud with zero boot delay.

    python -m tools.bench_provision --rentals 200 --workers 8 [--database-url postgres://…]

The real services, in ``--workers`` threads of this process: ``rental_create`` (the offer re-check
with the provider, the Rental row and its event, the task enqueued), then ``rental_provision`` as a
django-q worker runs it (create, key, wait until running, SSH login with the generated key,
active). Then every rental is stopped and torn down (``rental_teardown``, destroy verified with
the provider) and the sandbox must list no instance. Prints one ``BENCH_RESULT`` line (see
``tools/bench.py``, which runs this as part of ``make bench``).

What "the shopper's own overhead" means here: the wall time of create + provision minus the time
spent inside HTTP calls to the sandbox, inside the SSH login check and in deliberate waits (the
poll interval). The process's CPU time per rental is reported beside it.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tools.bench import HttpClock, _db_label, _django_setup, _emit, _exit_on_sigterm, _pct, _setup_env

FERNET_KEY = "8n7cyPbD0kqf9cJ0kQk3yqXKkXy7Gxh0o6lZ0xg3G2s="


class Waits:
    """Per-thread seconds spent in the SSH login check and in deliberate sleeps of the services."""

    def __init__(self) -> None:
        self._local = threading.local()

    def add(self, kind: str, seconds: float) -> None:
        self._local.__dict__[kind] = self.get(kind) + seconds

    def get(self, kind: str) -> float:
        return self._local.__dict__.get(kind, 0.0)

    def reset(self) -> None:
        self._local.__dict__.clear()

    def install(self) -> None:
        from sessions import provisioning, waits

        ssh_run, sleep = waits.PRODUCTION.ssh_run, waits.PRODUCTION.sleep

        def timed_ssh_run(**kwargs):
            started = time.perf_counter()
            try:
                return ssh_run(**kwargs)
            finally:
                self.add("ssh", time.perf_counter() - started)

        def timed_sleep(seconds: float) -> None:
            started = time.perf_counter()
            sleep(seconds)
            self.add("sleep", time.perf_counter() - started)

        # What provisioning is handed instead of the production waits (sessions/waits.py).
        self.waits = waits.Waits(sleep=timed_sleep, ssh_run=timed_ssh_run)
        # The node agent's start-up script runs on the GPU machine, not on the shopper's: left out
        # so the sandbox does not start 200 agents on the cores being measured.
        provisioning.agent_onstart = lambda: ""


def _provision_all(user, offer_ids: list, rentals: int, workers: int, clock: HttpClock, waits: Waits) -> dict:
    from django.db import connections

    from sessions.models import Status
    from sessions.provisioning import rental_provision
    from sessions.services import RentalError, rental_create

    lock = threading.Lock()
    offers = list(reversed(offer_ids))
    per_rental: list[dict] = []
    failures: list[str] = []
    counts = {"started": 0, "refused": 0}

    def worker() -> None:
        try:
            while True:
                with lock:
                    if counts["started"] >= rentals or not offers:
                        return
                    counts["started"] += 1
                    offer_id = offers.pop()
                clock.reset()
                waits.reset()
                started = time.perf_counter()
                try:
                    rental = rental_create(user=user, offer_id=offer_id, reservation_hours=1).rental
                except RentalError:
                    with lock:  # the offer went stale: try another, as a user would
                        counts["refused"] += 1
                        counts["started"] -= 1
                    continue
                rental_provision(rental_id=rental.pk, waits=waits.waits)
                ended = time.perf_counter()
                rental.refresh_from_db()
                if rental.status == Status.FAILED:
                    with lock:  # the provider refused the offer (no capacity) and nothing was created
                        counts["refused"] += 1
                        counts["started"] -= 1
                    continue
                if rental.status != Status.ACTIVE:
                    with lock:
                        failures.append(f"{rental.provider} {rental.status}: {rental.status_detail}"[:300])
                    continue
                wall = ended - started
                waited = clock.seconds + waits.get("ssh") + waits.get("sleep")
                with lock:
                    per_rental.append(
                        {
                            "wall": wall,
                            "own": wall - waited,
                            "http": clock.seconds,
                            "calls": clock.count,
                            "ssh": waits.get("ssh"),
                            "ended": ended,
                        }
                    )
        finally:
            connections.close_all()  # this thread's connection

    cpu = time.process_time()
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()
    cpu = time.process_time() - cpu
    done = len(per_rental)
    elapsed = max((r["ended"] for r in per_rental), default=time.perf_counter()) - started

    def mean(key: str) -> float:
        return sum(r[key] for r in per_rental) / max(1, done)

    own_ms = [r["own"] * 1000 for r in per_rental]
    return {
        "active": done,
        "offers_refused": counts["refused"],
        "failed": len(failures),
        "failures": failures[:5],
        "seconds": elapsed,
        "per_minute": done / elapsed * 60 if elapsed else 0.0,
        "own_ms_mean": mean("own") * 1000,
        "own_ms_p95": _pct(own_ms, 95),
        "wall_ms_mean": mean("wall") * 1000,
        "http_ms_mean": mean("http") * 1000,
        "http_calls_mean": mean("calls"),
        "ssh_ms_mean": mean("ssh") * 1000,
        "cpu_ms_per_rental": cpu / max(1, done) * 1000,
    }


def _teardown_all(workers: int) -> float:
    """Stop every live rental and run its teardown to the provider's confirmation."""
    from django.db import connections

    from sessions.models import LIVE_STATUSES, Rental, Status
    from sessions.services import rental_stop
    from sessions.teardown import rental_teardown

    def one(rental: Rental) -> None:
        try:
            if rental.status != Status.STOPPING:
                rental_stop(rental=rental, reason="Done (bench)")
            if not rental_teardown(rental_id=rental.pk):
                raise RuntimeError(f"teardown of {rental.pk} did not finish")
        finally:
            connections.close_all()

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, Rental.objects.filter(status__in=LIVE_STATUSES)))
    return time.perf_counter() - started


def run(database_url: str | None, rentals: int, workers: int) -> dict:
    from inventory.sandbox.testing import running_sandbox

    with (
        tempfile.TemporaryDirectory(prefix="shopper-bench-") as tmp,
        running_sandbox(Path(tmp), boot_delay=0) as sandbox,
    ):
        _setup_env(
            Path(tmp), database_url,
            VASTAI_API_URL=sandbox.vastai_url, TENSORDOCK_API_URL=sandbox.tensordock_url,
            SHOPPER_SANDBOX="True", SHOPPER_FERNET_KEYS=FERNET_KEY,
            SHOPPER_MAX_LIVE_RENTALS=str(rentals + workers + 10),
            # The sandbox is local: no pacing between calls (a real provider's would dominate).
            PROVIDER_MIN_INTERVAL_SECONDS="0", PROVIDER_TIMEOUT_SECONDS="30",
            SHOPPER_POLL_INTERVAL_SECONDS="0.2", SHOPPER_BOOT_TIMEOUT_SECONDS="60",
            SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS="60", SHOPPER_TEARDOWN_BUDGET_SECONDS="120",
            SHOPPER_DESTROY_MAX_BACKOFF_SECONDS="1",
        )  # fmt: skip
        _django_setup()
        from django.contrib.auth import get_user_model

        from inventory.models import Offer
        from inventory.services import offers_refresh
        from sessions.models import Rental, Status

        offers_refresh(force=True)
        offer_ids = list(Offer.objects.visible().values_list("pk", flat=True))
        random.Random(7).shuffle(offer_ids)
        user, _ = get_user_model().objects.get_or_create(username="bench")
        clock, waits = HttpClock(), Waits()
        clock.install()
        waits.install()
        figures = _provision_all(user, offer_ids, rentals, workers, clock, waits)
        teardown = _teardown_all(workers)
        left = len(sandbox.instances())
        destroyed = Rental.objects.filter(status=Status.DESTROYED).count()
        live = Rental.objects.live().count()
    return {
        "db": _db_label(database_url),
        "rentals": rentals,
        "workers": workers,
        **figures,
        "teardown_seconds": teardown,
        "destroyed": destroyed,
        "live_after_teardown": live,
        "left": left,
    }


# --------------------------------------------------------------------------------------------
# Under the field-notes faults (--field): how many rentals go active, and how long it takes.
# --------------------------------------------------------------------------------------------
def field_faults() -> dict:
    """``make run``'s mix (inventory/sandbox/faults.py FIELD_MIX) plus the rarer field failures:
    a 401 on a TensorDock create (TD-AUTH401), Vast loads that never finish (VA-LOADING) and
    containers that never start (VA-GPU-UNUSABLE)."""
    from inventory.sandbox.faults import FIELD_MIX

    return {
        "seed": FIELD_MIX["seed"],
        "rules": [
            *FIELD_MIX["rules"],
            {"dialect": "tensordock", "op": "create", "error_rate": 0.05, "error_status": 401},
            {"dialect": "vastai", "stuck_loading": 0.03, "oci_fail": 0.03},
        ],
    }


def _provision_field(user, offer_ids: list, rentals: int, workers: int, failover: bool) -> dict:
    """One rental per offer asked for, from rent to the status provisioning ends in; with
    ``failover`` a rental whose offer fails moves on to a comparable one by itself
    (sessions/failover.py), without it every failed attempt counts. Time to active =
    rental_create until active, failovers included."""
    from django.db import connections

    from sessions.models import Status
    from sessions.provisioning import rental_provision
    from sessions.services import RentalError, rental_create

    lock = threading.Lock()
    offers = list(reversed(offer_ids))
    to_active: list[float] = []
    outcomes: dict[str, int] = {}
    reasons: dict[str, int] = {}
    counts = {"attempts": 0, "refused_at_create": 0, "failovers": 0}

    def worker() -> None:
        try:
            while True:
                with lock:
                    if counts["attempts"] >= rentals or not offers:
                        return
                    counts["attempts"] += 1
                    offer_id = offers.pop()
                started = time.perf_counter()
                try:
                    rental = rental_create(
                        user=user, offer_id=offer_id, reservation_hours=1, failover=failover
                    ).rental
                except RentalError as exc:  # the re-check found the offer gone or re-priced
                    with lock:
                        counts["refused_at_create"] += 1
                        reasons[f"refused: {exc.code}"] = reasons.get(f"refused: {exc.code}", 0) + 1
                    continue
                rental_provision(rental_id=rental.pk)
                elapsed = time.perf_counter() - started
                rental.refresh_from_db()
                moves = rental.events.filter(data__failover=True).count()
                with lock:
                    counts["failovers"] += moves
                    outcomes[rental.status] = outcomes.get(rental.status, 0) + 1
                    if rental.status == Status.ACTIVE:
                        to_active.append(elapsed)
                    else:
                        reason = rental.events.exclude(to_status="").order_by("-at").first()
                        words = (reason.reason if reason else rental.status)[:70]
                        reasons[words] = reasons.get(words, 0) + 1
        finally:
            connections.close_all()

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()
    attempts = counts["attempts"]
    return {
        "attempts": attempts,
        "active": len(to_active),
        "success_rate": len(to_active) / attempts if attempts else 0.0,
        "refused_at_create": counts["refused_at_create"],
        "failover": failover,
        "failovers": counts["failovers"],
        "outcomes": outcomes,
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:8]),
        "to_active_p50_s": _pct(to_active, 50),
        "to_active_p95_s": _pct(to_active, 95),
    }


def run_field(database_url: str | None, rentals: int, workers: int, failover: bool = True) -> dict:
    from inventory.sandbox.testing import running_sandbox

    with (
        tempfile.TemporaryDirectory(prefix="shopper-bench-field-") as tmp,
        running_sandbox(Path(tmp), boot_delay=2) as sandbox,
    ):
        _setup_env(
            Path(tmp), database_url,
            VASTAI_API_URL=sandbox.vastai_url, TENSORDOCK_API_URL=sandbox.tensordock_url,
            SHOPPER_SANDBOX="True", SHOPPER_FERNET_KEYS=FERNET_KEY,
            SHOPPER_MAX_LIVE_RENTALS=str(rentals + workers + 10),
            PROVIDER_MIN_INTERVAL_SECONDS="0.05", PROVIDER_TIMEOUT_SECONDS="30",
            SHOPPER_POLL_INTERVAL_SECONDS="1", SHOPPER_BOOT_TIMEOUT_SECONDS="60",
            SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS="60", SHOPPER_TEARDOWN_BUDGET_SECONDS="120",
            SHOPPER_DESTROY_MAX_BACKOFF_SECONDS="1", SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS="1",
        )  # fmt: skip
        _django_setup()
        from django.contrib.auth import get_user_model

        from inventory.models import Offer
        from inventory.services import offers_refresh
        from sessions import provisioning, teardown
        from sessions.models import Rental, Status

        provisioning.agent_onstart = lambda: ""  # the node agent runs on the GPU machine, not here
        offers_refresh(force=True)  # the menu as a user sees it: faults do not hide offers from it
        sandbox.set_faults(field_faults())
        offer_ids = list(Offer.objects.visible().values_list("pk", flat=True))
        random.Random(7).shuffle(offer_ids)
        user, _ = get_user_model().objects.get_or_create(username="bench")
        figures = _provision_field(user, offer_ids, rentals, workers, failover)
        sandbox.set_faults({})
        _teardown_all(workers)
        # A failure that stopped a rental has its teardown enqueued (Q_SYNC off here): finish those.
        for rental in Rental.objects.filter(status=Status.STOPPING):
            teardown.rental_teardown(rental_id=rental.pk)
        left = len(sandbox.instances())
        live = Rental.objects.live().count()
    return {"db": _db_label(database_url), "rentals": rentals, "workers": workers, **figures,
            "live_after_teardown": live, "left": left}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rentals", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--database-url", default="sqlite", help="postgres://… (default: a fresh SQLite file)"
    )
    parser.add_argument("--field", action="store_true", help="under the field-notes faults (field_faults)")
    parser.add_argument(
        "--no-failover", action="store_true", help="with --field: rentals do not move to another offer"
    )
    args = parser.parse_args(argv)
    _exit_on_sigterm()
    database_url = None if args.database_url == "sqlite" else args.database_url
    if args.field:
        _emit(run_field(database_url, args.rentals, args.workers, failover=not args.no_failover))
        return 0
    _emit(run(database_url, args.rentals, args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
