"""Chaos run: many rentals against the sandbox cloud with every fault injected (the field-notes
ones included: hosts without public IPs, stale offers, 401s on create, slow, stuck and failed
loads, a shared rate limit, changing list shapes), while the worker
and the safety loop are killed (SIGKILL) and restarted, and the web server restarted.

    python -m shopper.chaos --rentals 50           (the test suite runs a small one)
    make soak                                       (200 rentals)

Real processes throughout: the sandbox cloud, the web server (the node agents heartbeat to it),
the django-q2 worker and the safety loop, on a fresh SQLite file (or BENCH_DATABASE_URL). It
prints leaks (instances left in the sandbox), rentals not terminal, and the worst deadline lag,
and exits non-zero if any of them breaks its bound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAULTS = {
    "seed": 11,
    "rules": [
        {"op": "create", "rate_limit_burst": 3},
        {"op": ["get", "list"], "error_rate": 0.05, "error_status": 503},
        {"op": "create", "create_error_but_created": 0.15},
        {"dialect": "vastai", "create_error_but_created": 0.05, "create_error_mode": "success_false"},
        {"listing_lag_s": 2},
        {"destroy_fail_times": 2},
        {"op": "search", "slow_ms": 100},
        # How the real providers failed in the field (FIELD_NOTES; inventory/sandbox/faults.py):
        {"dialect": "tensordock", "no_public_ip": 0.25},  # TD-NOPUBLICIP (8 of 31 live)
        {"dialect": "tensordock", "stale_locations": 0.2, "stale_minutes": 5},  # TD-STALE-NONODES
        {"dialect": "tensordock", "op": "create", "error_rate": 0.05, "error_status": 401},  # TD-AUTH401
        {"dialect": "tensordock", "list_shape": "rotate"},  # TD-LISTSHAPE
        {"dialect": "vastai", "search_stale_s": 30},  # VA-NOSUCHASK on asks search still shows
        {"dialect": "vastai", "loading_s": [1, 8]},  # VA-LOADING (shortened)
        {"dialect": "vastai", "stuck_loading": 0.04, "oci_fail": 0.04},  # VA-LOADING, VA-GPU-UNUSABLE
        {"dialect": "vastai", "rate_per_s": 10, "rate_burst": 10},  # VA-RATELIMIT, shared per key
    ],
}


# Rentals whose timeline shows each field-notes failure (the provider's own words).
FIELD_WORDS = {
    "no_public_ip": "No available public IPs",
    "stale_location": "No available nodes",
    "auth_401": "401",
    "no_such_ask": "no_such_ask",
    "oci_failed": "OCI runtime create failed",
    "boot_timeout": "did not start within the boot timeout",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """The shopper's processes, each restartable and killable."""

    def __init__(self, env: dict, log_dir: Path, web_port: int):
        self.env, self.log_dir, self.web_port = env, log_dir, web_port
        self.procs: dict[str, subprocess.Popen] = {}
        self.commands = {
            "worker": [sys.executable, "manage.py", "qcluster"],
            "safety": [sys.executable, "manage.py", "safety_loop"],
            "web": [sys.executable, "-m", "shopper.serve", "--port", str(web_port), "--workers", "1"],
        }

    def start(self, name: str) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            self.commands[name], cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
        )

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group: nothing gets to clean up."""
        proc = self.procs.get(name)
        if proc and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chaos run against the sandbox cloud.")
    parser.add_argument("--rentals", type=int, default=50)
    parser.add_argument("--reservation-minutes", type=float, default=1.5)
    parser.add_argument("--timeout", type=float, default=420)
    parser.add_argument("--boot-delay", type=float, default=1.0)
    parser.add_argument("--report-lags", action="store_true", help="include every deadline lag in the report")
    parser.add_argument(
        "--kill-idle-workers",
        action="store_true",
        help="the jammed-queue phase instead (run_killed_idle_workers)",
    )
    args = parser.parse_args(argv)
    if args.kill_idle_workers:
        return run_killed_idle_workers(args)

    tmp = Path(tempfile.mkdtemp(prefix="shopper-chaos-"))
    web_port = _free_port()
    env = dict(os.environ)
    env.update(
        DEBUG="False", SHOPPER_TESTING="True", SECRET_KEY="chaos-secret-key-0123456789abcdefghij",
        DATABASE_URL=os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{tmp / 'chaos.sqlite3'}",
        SHOPPER_FERNET_KEYS="8n7cyPbD0kqf9cJ0kQk3yqXKkXy7Gxh0o6lZ0xg3G2s=",
        SHOPPER_PUBLIC_URL=f"http://127.0.0.1:{web_port}", ALLOWED_HOSTS="127.0.0.1,localhost",
        Q_WORKERS="3", Q_SYNC="False", Q_TIMEOUT="300", CHANNEL_LAYER="memory", LOG_LEVEL="WARNING",
        PROVIDER_MIN_INTERVAL_SECONDS="0.02", PROVIDER_TIMEOUT_SECONDS="10",
        SHOPPER_POLL_INTERVAL_SECONDS="0.5", SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS="1",
        SHOPPER_CREATE_SETTLE_SECONDS="15", SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS="60",
        SHOPPER_BOOT_TIMEOUT_SECONDS="120", SHOPPER_TEARDOWN_BUDGET_SECONDS="60",
        SHOPPER_DESTROY_MAX_BACKOFF_SECONDS="2", SHOPPER_LIFECYCLE_INTERVAL_SECONDS="2",
        SHOPPER_RECONCILE_INTERVAL_SECONDS="5", SHOPPER_ORPHAN_GRACE_SECONDS="10",
        SHOPPER_MAX_LIVE_RENTALS=str(args.rentals + 10),
        # Short leases: work a killed worker held is taken over (and tested) within the run.
        SHOPPER_LEASE_SECONDS="30",
    )  # fmt: skip
    sys.path.insert(0, str(ROOT))
    from inventory.sandbox.testing import running_sandbox

    with running_sandbox(tmp, boot_delay=args.boot_delay, faults=FAULTS) as sandbox:
        env.update(
            VASTAI_API_URL=sandbox.vastai_url, VASTAI_API_KEY="chaos",
            TENSORDOCK_API_URL=sandbox.tensordock_url, TENSORDOCK_API_TOKEN="chaos", SHOPPER_SANDBOX="True",
        )  # fmt: skip
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "shopper.settings"
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from inventory.models import Offer
        from inventory.services import offers_refresh
        from sessions.models import TERMINAL_STATUSES, Rental, RentalEvent
        from sessions.services import RentalError, rental_create, rental_stop

        sandbox.set_faults({"rules": []})  # a clean menu; faults apply to the rentals
        offers_refresh(force=True)
        sandbox.set_faults(FAULTS)
        user, _ = get_user_model().objects.get_or_create(username="chaos")
        procs = Procs(env, tmp, web_port)
        for name in ("web", "worker", "safety"):
            procs.start(name)
        rng = random.Random(7)
        offers = list(Offer.objects.visible().order_by("?").values_list("pk", flat=True)[: args.rentals * 3])
        started = time.monotonic()
        created, refused = [], 0
        hours = args.reservation_minutes / 60
        try:
            for i, offer_id in enumerate(offers):
                if len(created) >= args.rentals:
                    break
                try:
                    created.append(
                        rental_create(user=user, offer_id=offer_id, reservation_hours=f"{hours:.4f}").rental
                    )
                except RentalError:
                    refused += 1  # an offer the sandbox no longer has: fine, try another
                if i == args.rentals // 3:
                    procs.kill("worker")  # mid-flight: creates in progress die with it
                    procs.kill("safety")
                    procs.start("worker")
                    procs.start("safety")
                if i == args.rentals // 2:
                    procs.kill("web")
                    procs.start("web")
            # Some users finish early; the rest run into their reservation deadline.
            for rental in rng.sample(created, k=len(created) // 4):
                with contextlib.suppress(RentalError):  # already ended by a fault: fine
                    rental_stop(rental=Rental.objects.get(pk=rental.pk), reason="Done (chaos run)")
            time.sleep(5)
            procs.kill("worker")
            procs.start("worker")
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                left = Rental.objects.exclude(status__in=TERMINAL_STATUSES).count()
                if not left:
                    break
                time.sleep(2)
            # Reconciliation needs a few cycles to destroy orphans after their grace period.
            orphan_deadline = time.monotonic() + 60
            sandbox.set_faults({"rules": []})
            while sandbox.instances() and time.monotonic() < orphan_deadline:
                time.sleep(2)
        finally:
            procs.stop_all()
        leaks = sandbox.instances()
        not_terminal = list(Rental.objects.exclude(status__in=TERMINAL_STATUSES).values_list("pk", "status"))
        lags = [e.data.get("lag_seconds", 0) for e in RentalEvent.objects.filter(reason="Deadline enforced")]
        statuses = {}
        for status in Rental.objects.values_list("status", flat=True):
            statuses[status] = statuses.get(status, 0) + 1
        field_seen = {
            name: RentalEvent.objects.filter(reason__icontains=words).values("rental").distinct().count()
            for name, words in FIELD_WORDS.items()
        }
        report = {
            "rentals": len(created), "refused_at_create": refused, "statuses": statuses,
            "field_faults_seen": field_seen,
            "leaks": len(leaks), "not_terminal": len(not_terminal), "deadlines_enforced": len(lags),
            "worst_deadline_lag_s": round(max(lags, default=0.0), 2),
            "seconds": round(time.monotonic() - started, 1),
        }  # fmt: skip
        if args.report_lags:
            report["lags"] = lags
        print(json.dumps(report, indent=2))
        if leaks:
            print("LEAKED:", json.dumps(leaks)[:2000])
        if not_terminal:
            print("NOT TERMINAL:", not_terminal[:20])
        ok = not leaks and not not_terminal and report["worst_deadline_lag_s"] <= 60 and created
        print("CHAOS OK" if ok else f"CHAOS FAILED (logs in {tmp})")
        return 0 if ok else 1


# --------------------------------------------------------------------------------------------
# Idle workers SIGKILLed: the django-q2 cluster reincarnates them and then never runs a task
# again (sessions/stalled.py). Every due teardown must still finish within 2 minutes.
# --------------------------------------------------------------------------------------------
IDLE_KILL_FAULTS = {"seed": 5, "rules": [{"destroy_fail_times": 1}, {"listing_lag_s": 1}]}
TEARDOWN_BOUND_S = 120


def proc_children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``, oldest (lowest pid) first; read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def qcluster_worker_pids(main_pid: int, workers: int) -> list[int]:
    """The worker processes of ``manage.py qcluster`` (pid ``main_pid``): its sentinel spawns the
    workers first, then the monitor and the pusher (django_q/cluster.py spawn_cluster), so they
    are the sentinel's ``workers`` oldest children. Empty until the cluster is up."""
    sentinels = proc_children(main_pid)
    if len(sentinels) != 1:
        return []
    kids = proc_children(sentinels[0])
    return kids[:workers] if len(kids) >= workers + 2 else []


def run_killed_idle_workers(args) -> int:
    """Rentals go active with a healthy queue; then both idle workers are SIGKILLed (the cluster
    reincarnates them, jammed); a third are stopped by their users, the rest reach their
    reservation deadline, and a few more are rented into the jammed queue. Reports how long each
    teardown took from when it was due (the stop, or the deadline) until the provider confirmed."""
    rentals = min(args.rentals, 12)
    tmp = Path(tempfile.mkdtemp(prefix="shopper-chaos-idle-"))
    web_port = _free_port()
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.update(
        DEBUG="False", SHOPPER_TESTING="True", SECRET_KEY="chaos-secret-key-0123456789abcdefghij",
        DATABASE_URL=os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{tmp / 'chaos.sqlite3'}",
        SHOPPER_FERNET_KEYS="8n7cyPbD0kqf9cJ0kQk3yqXKkXy7Gxh0o6lZ0xg3G2s=",
        SHOPPER_PUBLIC_URL=f"http://127.0.0.1:{web_port}", ALLOWED_HOSTS="127.0.0.1,localhost",
        Q_WORKERS="2", Q_SYNC="False", Q_TIMEOUT="300", CHANNEL_LAYER="memory", LOG_LEVEL="WARNING",
        PROVIDER_MIN_INTERVAL_SECONDS="0.02", PROVIDER_TIMEOUT_SECONDS="10",
        SHOPPER_POLL_INTERVAL_SECONDS="0.5", SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS="1",
        SHOPPER_CREATE_SETTLE_SECONDS="15", SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS="60",
        SHOPPER_BOOT_TIMEOUT_SECONDS="120", SHOPPER_TEARDOWN_BUDGET_SECONDS="60",
        SHOPPER_DESTROY_MAX_BACKOFF_SECONDS="2", SHOPPER_LIFECYCLE_INTERVAL_SECONDS="2",
        SHOPPER_RECONCILE_INTERVAL_SECONDS="5", SHOPPER_ORPHAN_GRACE_SECONDS="10",
        SHOPPER_MAX_LIVE_RENTALS=str(rentals + 10), SHOPPER_LEASE_SECONDS="30",
        # The product's bound, not a shortened one: a teardown not started in 60 s is the loop's.
        SHOPPER_QUEUE_STALL_SECONDS="60", SHOPPER_QUEUE_TAKEOVER_SECONDS="20",
    )  # fmt: skip
    sys.path.insert(0, str(ROOT))
    from inventory.sandbox.testing import running_sandbox

    def worker_health(max_age: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", "worker_health", "--max-age", str(max_age)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    with running_sandbox(tmp, boot_delay=args.boot_delay, faults=IDLE_KILL_FAULTS) as sandbox:
        env.update(
            VASTAI_API_URL=sandbox.vastai_url, VASTAI_API_KEY="chaos",
            TENSORDOCK_API_URL=sandbox.tensordock_url, TENSORDOCK_API_TOKEN="chaos", SHOPPER_SANDBOX="True",
        )  # fmt: skip
        os.environ.update(env)
        os.environ.pop("REDIS_URL", None)
        os.environ["DJANGO_SETTINGS_MODULE"] = "shopper.settings"
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.utils import timezone

        call_command("migrate", verbosity=0)
        from inventory.models import Offer
        from inventory.services import offers_refresh
        from sessions.models import TERMINAL_STATUSES, Alert, AlertKind, Rental, RentalEvent, Status
        from sessions.services import RentalError, rental_create, rental_stop

        sandbox.set_faults({"rules": []})
        offers_refresh(force=True)
        sandbox.set_faults(IDLE_KILL_FAULTS)
        user, _ = get_user_model().objects.get_or_create(username="chaos")
        procs = Procs(env, tmp, web_port)
        for name in ("web", "worker", "safety"):
            procs.start(name)
        offers = list(Offer.objects.visible().order_by("?").values_list("pk", flat=True)[: rentals * 4])
        hours = f"{args.reservation_minutes / 60:.4f}"
        started = time.monotonic()
        created, late = [], []
        report: dict = {}
        killed_at = timezone.now()
        try:
            for offer_id in offers:
                if len(created) >= rentals:
                    break
                with contextlib.suppress(RentalError):
                    created.append(
                        rental_create(user=user, offer_id=offer_id, reservation_hours=hours).rental
                    )
            # A healthy queue first: every rental provisioned (or failed) by the workers.
            deadline = time.monotonic() + 180
            in_flight = (Status.PENDING, Status.PROVISIONING, Status.BOOTING, Status.VERIFYING)
            while Rental.objects.filter(status__in=in_flight).exists() and time.monotonic() < deadline:
                time.sleep(1)
            report["active_before_kill"] = Rental.objects.filter(status=Status.ACTIVE).count()
            # Idle: no lease held, nothing queued; then SIGKILL both workers while they wait.
            from django_q.models import OrmQ

            while time.monotonic() < deadline and (
                OrmQ.objects.exists()
                or Rental.objects.filter(provision_claimed_until__gt=timezone.now()).exists()
                or Rental.objects.filter(teardown_claimed_until__gt=timezone.now()).exists()
            ):
                time.sleep(0.5)
            time.sleep(2)
            workers = qcluster_worker_pids(procs.procs["worker"].pid, 2)
            assert len(workers) == 2, f"qcluster workers not found: {workers}"
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            killed_at = timezone.now()
            reincarnated = time.monotonic() + 30
            while time.monotonic() < reincarnated:
                now_workers = qcluster_worker_pids(procs.procs["worker"].pid, 2)
                if len(now_workers) == 2 and not set(now_workers) & set(workers):
                    break
                time.sleep(0.5)
            report["workers_reincarnated"] = time.monotonic() < reincarnated
            worker_health(60)  # enqueues a probe the jammed queue should run at once
            active = list(Rental.objects.filter(status=Status.ACTIVE))
            for rental in active[: len(active) // 3]:
                with contextlib.suppress(RentalError):
                    rental_stop(rental=rental, reason="Done (chaos run, jammed queue)")
            for offer_id in offers[len(offers) // 2 :]:
                if len(late) >= 2:
                    break
                with contextlib.suppress(RentalError):
                    late.append(rental_create(user=user, offer_id=offer_id, reservation_hours=hours).rental)
            deadline = time.monotonic() + args.timeout
            while (
                Rental.objects.exclude(status__in=TERMINAL_STATUSES).exists() and time.monotonic() < deadline
            ):
                time.sleep(2)
            health = worker_health(30)
            report["worker_health_exit"] = health.returncode
            report["worker_health"] = (health.stderr or health.stdout).strip()[-300:]
            orphan_deadline = time.monotonic() + 60
            sandbox.set_faults({"rules": []})
            while sandbox.instances() and time.monotonic() < orphan_deadline:
                time.sleep(2)
        finally:
            procs.stop_all()
        torn = []
        for rental in Rental.objects.filter(status=Status.DESTROYED, stop_requested_at__gte=killed_at):
            due = min(rental.stop_requested_at, rental.reservation_ends_at)
            torn.append((rental.ended_at - due).total_seconds())
        torn.sort()
        lags = [e.data.get("lag_seconds", 0) for e in RentalEvent.objects.filter(reason="Deadline enforced")]
        late_rows = Rental.objects.filter(pk__in=[r.pk for r in late])
        leaks = sandbox.instances()
        not_terminal = Rental.objects.exclude(status__in=TERMINAL_STATUSES).count()
        report.update(
            rentals=len(created), teardowns_after_kill=len(torn),
            teardown_after_due_s={
                "p50": round(torn[len(torn) // 2], 1) if torn else None,
                "max": round(torn[-1], 1) if torn else None,
            },
            teardowns_over_bound=sum(t > TEARDOWN_BOUND_S for t in torn),
            rented_into_jam=len(late), rented_into_jam_failed=late_rows.filter(status=Status.FAILED).count(),
            worst_deadline_lag_s=round(max(lags, default=0.0), 2),
            queue_stalled_alerts=Alert.objects.filter(kind=AlertKind.QUEUE_STALLED).count(),
            leaks=len(leaks), not_terminal=not_terminal, seconds=round(time.monotonic() - started, 1),
        )  # fmt: skip
        print(json.dumps(report, indent=2))
        ok = (
            torn
            and not leaks
            and not not_terminal
            and report["teardowns_over_bound"] == 0
            and report["worker_health_exit"] == 1
            and report["worst_deadline_lag_s"] <= 60
        )
        print("CHAOS OK" if ok else f"CHAOS FAILED (logs in {tmp})")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
