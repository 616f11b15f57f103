"""Chaos run: many rentals against the sandbox cloud on all four providers (Vast.ai, TensorDock,
RunPod, Lambda; offers taken from each in turn) with every fault injected (the field-notes
ones included: hosts without public IPs, stale offers, 401s on create, slow, stuck and failed
loads, a shared rate limit, changing list shapes, RunPod/Lambda capacity errors), while the worker
and the safety loop are killed (SIGKILL) and restarted, and the web server restarted.

    python -m tools.chaos --rentals 50           (the test suite runs a small one)
    make soak                                       (200 rentals)

Real processes throughout: the sandbox cloud, the web server (the node agents heartbeat to it),
the django-q2 worker and the safety loop, on a fresh SQLite file (or BENCH_DATABASE_URL). It
prints leaks (instances left in the sandbox), rentals not terminal, and the worst deadline lag,
and exits non-zero if any of them breaks its bound.

Then the deployments phase (``--deployment-rentals``, issue 16): a second deployment (its own
database, id and processes) rents beside the first on the same sandbox account; 0 machines of
one touched by the other, each destroys its own orphan, 0 leaks (``--deployments-only``).

Then the grace phase (``--grace-rentals``, issue 12 "destroys healthy machines"): a few long
rentals whose agents heartbeat every 2 s against a 20 s heartbeat timeout, on a Vast listing that
lags ``--listing-lag`` s (a second batch is rented once the first is listed, so the lag really
hides instances from non-empty listings), then the whole stack stopped (SIGTERM, as
``docker compose stop``) for longer than the heartbeat timeout and started again. Healthy machines
destroyed (silent-agent or ghost stops) must be 0.
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
        # Machines that do not have the GPUs that were sold (node faults, drawn per machine):
        {"dialect": "tensordock", "node_fault": "no_driver", "repair_s": [2, 10], "p": 0.2},  # TD-NODRIVER
        {"dialect": "tensordock", "node_fault": "no_driver", "repair_fails": True, "p": 0.05},
        {"dialect": "vastai", "cuda_lie": True, "p": 0.05},  # VA-CUDA-LIE
        # RunPod and Lambda (RUNPOD_LAMBDA.md; inventory/sandbox/faults.py): capacity refused while
        # listed, slow image pulls and boots, sshd late after RUNNING, pods in ERROR, instances
        # whose health checks never pass, and Lambda's launch limit (scaled to the run).
        {"dialect": "runpod", "no_capacity": 0.1, "stale_minutes": 2},  # RP-NOCAPACITY
        {"dialect": "runpod", "loading_s": [1, 6], "oci_fail": 0.03},
        {"dialect": "runpod", "key_delay_s": [1, 4], "p": 0.3},
        {"dialect": "lambda", "no_capacity": 0.1, "stale_minutes": 2},  # L-CAPACITY
        {"dialect": "lambda", "loading_s": [2, 8], "stuck_loading": 0.03},
        {"dialect": "lambda", "op": "create", "rate_per_s": 2, "rate_burst": 2},
    ],
}
PROVIDERS = ("vastai", "tensordock", "runpod", "lambda")


def field_faults_seen() -> dict[str, int]:
    """Rentals whose timeline shows each field-notes failure, found by the event's cause and the
    provider's own words (``data["provider_error"]``, verbatim), never by our sentences, which may
    be reworded (sessions.models.RentalEvent)."""
    from django.db.models import Q

    from sessions.models import EventCause as C
    from sessions.models import RentalEvent

    def said(words: str) -> Q:
        return Q(data__provider_error__icontains=words)

    faults = {
        "no_public_ip": said("No available public IPs"),  # TD-NOPUBLICIP
        "stale_location": said("No available nodes"),  # TD-STALE-NONODES
        "auth_401": Q(data__cause=C.CREATE_401) | Q(data__cause=C.CREATE_FAILED, data__code="auth_failed"),
        "no_such_ask": said("no_such_ask"),  # VA-NOSUCHASK
        "oci_failed": said("OCI runtime create failed"),  # VA-GPU-UNUSABLE
        "boot_timeout": Q(data__cause=C.BOOT_TIMEOUT),
        "no_driver": Q(data__cause=C.GPU_NO_DRIVER),  # TD-NODRIVER
        "gpu_refused": Q(data__cause__in=[C.GPU_NO_DRIVER, C.GPU_MISMATCH, C.MACHINE_STOPPED]),
        "runpod_capacity": said("no longer any instances available"),  # RUNPOD_LAMBDA.md
        "lambda_capacity": said("insufficient-capacity"),  # RUNPOD_LAMBDA.md
    }
    return {
        name: RentalEvent.objects.filter(match).values("rental").distinct().count()
        for name, match in faults.items()
    }


def deadline_lags() -> list[float]:
    """The lateness of every deadline enforced so far (``deadline`` events)."""
    from sessions.models import EventKind, RentalEvent

    events = RentalEvent.objects.filter(kind=EventKind.DEADLINE)
    return [e.data.get("lag_seconds", 0) for e in events]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chaos_env(tmp: Path, web_port: int, max_live: int, **overrides: str | None) -> dict:
    """The environment of every chaos phase, for its processes and this one: a fresh SQLite file
    (or BENCH_DATABASE_URL), short intervals and leases so that faults and kills play out within
    the run. ``overrides`` are the phase's own; None removes a variable."""
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
        SHOPPER_MAX_LIVE_RENTALS=str(max_live),
        # Short leases: work a killed worker held is taken over (and tested) within the run.
        SHOPPER_LEASE_SECONDS="30",
    )  # fmt: skip
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def sandbox_django_setup(env: dict, sandbox, faults: dict) -> None:
    """Point ``env`` at the running sandbox cloud, set this process up on it (Django, migrated),
    and fill the menu from a clean sandbox before ``faults`` apply to the rentals."""
    env.update(
        VASTAI_API_URL=sandbox.vastai_url, VASTAI_API_KEY="chaos",
        TENSORDOCK_API_URL=sandbox.tensordock_url, TENSORDOCK_API_TOKEN="chaos", SHOPPER_SANDBOX="True",
        RUNPOD_API_URL=sandbox.runpod_url, RUNPOD_API_KEY="chaos",
        LAMBDA_API_URL=sandbox.lambda_url, LAMBDA_API_KEY="chaos",
    )  # fmt: skip
    if "REDIS_URL" not in env:  # a phase that removed it (chaos_env) runs without it here too
        os.environ.pop("REDIS_URL", None)
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "shopper.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from inventory.services import offers_refresh

    sandbox.set_faults({"rules": []})  # a clean menu; faults apply to the rentals
    offers_refresh(force=True)
    sandbox.set_faults(faults)


class Procs:
    """The shopper's processes, each restartable and killable."""

    def __init__(self, env: dict, log_dir: Path, web_port: int):
        self.env, self.log_dir, self.web_port = env, log_dir, web_port
        self.procs: dict[str, subprocess.Popen] = {}
        self.commands = {
            "worker": [sys.executable, "manage.py", "qcluster"],
            "safety": [sys.executable, "manage.py", "safety_loop"],
            "safety2": [sys.executable, "manage.py", "safety_loop"],  # --kill-safety-leader
            "web": [sys.executable, "-m", "shopper.serve", "--port", str(web_port), "--workers", "1"],
        }

    def start(self, name: str) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            self.commands[name], cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
        )

    def stop(self, name: str) -> None:
        """SIGTERM and wait, as ``docker compose stop`` does."""
        proc = self.procs.get(name)
        if proc and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

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


def grace_phase(sandbox, base_env: dict, tmp: Path, web_port: int, args) -> dict:
    """Issue 12 at process level: a lagging Vast listing, then a full-stack outage (see the module
    docstring). Runs after the main phase, on the same database and sandbox; returns its figures."""
    from django.utils import timezone

    from inventory.models import Offer
    from sessions.models import (
        DEADLINE_AGENT_SILENT,
        IN_FLIGHT_STATUSES,
        TERMINAL_STATUSES,
        Alert,
        AlertKind,
        EventKind,
        Rental,
        RentalEvent,
        Status,
    )
    from sessions.services import RentalError, rental_create, rental_stop

    timeout_s, outage_s = 20, 35
    env = dict(base_env)
    env.update(
        SHOPPER_HEARTBEAT_TIMEOUT_SECONDS=str(timeout_s), SHOPPER_AGENT_HEARTBEAT_SECONDS="2",
        # The agent failsafe outlasts the outage (shopper.W012), as the defaults do (900 s vs 300 s).
        SHOPPER_AGENT_UNREACHABLE_SECONDS="180", SHOPPER_UPTIME_GAP_SECONDS="10",
    )  # fmt: skip
    sandbox.set_faults({"rules": [{"dialect": "vastai", "listing_lag_s": args.listing_lag}]})
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="chaos")
    procs = Procs(env, tmp, web_port)
    for name in ("web", "worker", "safety"):
        procs.start(name)
    started = time.monotonic()
    phase_start = timezone.now()
    report: dict = {"grace_rentals": 0}
    ours = Rental.objects.filter(created_at__gte=phase_start)

    max_missing = 0  # the most consecutive listings a live rental was missing from, seen each second

    def wait_until(check, limit: float) -> bool:
        nonlocal max_missing
        end = time.monotonic() + limit
        while time.monotonic() < end:
            max_missing = max(max_missing, max(ours.values_list("missing_count", flat=True), default=0))
            if check():
                return True
            time.sleep(1)
        return False

    def rent_active(provider: str, n: int) -> list:
        """n rentals of ``provider`` that are active with their agent heartbeating; an offer the
        sandbox refuses (no public IP, gone) is replaced by another."""
        active, tried = [], set()
        for _ in range(5):
            batch = []
            offers = Offer.objects.visible().filter(provider=provider).exclude(pk__in=tried).order_by("?")
            for offer_id in offers.values_list("pk", flat=True):
                if len(batch) >= n - len(active):
                    break
                tried.add(offer_id)
                with contextlib.suppress(RentalError):  # an offer gone meanwhile: take another
                    batch.append(
                        rental_create(user=user, offer_id=offer_id, reservation_hours="0.5").rental.pk
                    )
            rows = Rental.objects.filter(pk__in=batch)
            settled = rows.exclude(status__in=IN_FLIGHT_STATUSES)
            heard = settled.exclude(status=Status.ACTIVE, last_heartbeat_at__isnull=True)
            wait_until(lambda rows=rows, heard=heard: heard.count() == rows.count(), 120)
            active += list(rows.filter(status=Status.ACTIVE).values_list("pk", flat=True))
            if len(active) >= n:
                break
        return active

    def watch_listing(limit: float) -> None:
        wait_until(lambda: False, limit)

    try:
        first = rent_active("vastai", args.grace_rentals // 2) + rent_active("tensordock", 1)
        # The first batch becomes listed after the lag; the second is then hidden from listings
        # that are not empty, which the old code counted as missing (two misses: a ghost).
        watch_listing(max(0.0, args.listing_lag + 5 - (time.monotonic() - started)))
        second = rent_active("vastai", args.grace_rentals - len(first))
        watch_listing(args.listing_lag + 15)
        live = list(ours.filter(pk__in=first + second, status=Status.ACTIVE).values_list("pk", flat=True))

        for name in ("web", "worker", "safety"):  # the whole stack, as an upgrade stops it
            procs.stop(name)
        watch_listing(outage_s)
        for name in ("web", "worker", "safety"):
            procs.start(name)
        back = timezone.now()
        # Every agent heartbeats again within seconds; give the old rule's victims time to show.
        wait_until(lambda: ours.filter(pk__in=live, last_heartbeat_at__gte=back).count() == len(live), 60)
        watch_listing(timeout_s + 10)
        silent = RentalEvent.objects.filter(
            rental__in=live, kind=EventKind.DEADLINE, data__deadline_kind=DEADLINE_AGENT_SILENT
        ).count()
        ghosts = Alert.objects.filter(kind=AlertKind.GHOST, created_at__gte=phase_start).count()
        report.update(
            grace_rentals=len(first) + len(second),
            grace_active_before_outage=len(live),
            listing_lag_s=args.listing_lag,
            listing_max_missing_count=max_missing,
            false_ghosts=ghosts,
            outage_s=outage_s,
            heartbeat_timeout_s=timeout_s,
            heartbeating_after_outage=ours.filter(pk__in=live, last_heartbeat_at__gte=back).count(),
            healthy_destroyed=silent + ghosts,
            still_active_after_outage=ours.filter(pk__in=live, status=Status.ACTIVE).count(),
        )
        for pk in ours.exclude(status__in=TERMINAL_STATUSES).values_list("pk", flat=True):
            with contextlib.suppress(RentalError):
                rental_stop(rental=Rental.objects.get(pk=pk), reason="Done (chaos grace phase)")
        sandbox.set_faults({"rules": []})
        wait_until(
            lambda: not ours.exclude(status__in=TERMINAL_STATUSES).exists() and not sandbox.instances(), 120
        )
    finally:
        procs.stop_all()
    report.update(
        grace_leaks=len(sandbox.instances()),
        grace_not_terminal=ours.exclude(status__in=TERMINAL_STATUSES).count(),
        grace_seconds=round(time.monotonic() - started, 1),
    )
    return report


def grace_ok(report: dict, wanted: int) -> bool:
    return (
        report.get("grace_rentals") == wanted
        and report.get("grace_active_before_outage") == wanted
        and report.get("healthy_destroyed") == 0
        and report.get("false_ghosts") == 0
        and report.get("listing_max_missing_count", 0) >= 2  # the lag really hid live instances
        and report.get("still_active_after_outage") == wanted
        and report.get("heartbeating_after_outage") == wanted
        and report.get("grace_leaks") == 0
        and report.get("grace_not_terminal") == 0
    )


# --------------------------------------------------------------------------------------------
# Two deployments on one provider account (issue 16, deployment scoping): a second shopper with
# its own database, id and processes rents beside the first on the same sandbox account; neither
# may touch the other's machines, and each must still destroy its own orphans.
# --------------------------------------------------------------------------------------------
SECOND_DEPLOYMENT_ID = "chaosb"


def _second(env_b: dict, action: str, n: int = 0) -> dict:
    """Run ``action`` in the second deployment (its own database) as a process; its JSON answer."""
    run = subprocess.run(
        [sys.executable, "-m", "tools.chaos", "--second-deployment", action,
         "--deployment-rentals", str(n)],
        cwd=ROOT, env=env_b, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"second deployment {action} failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _rent(user, n: int) -> list[str]:
    """Up to n rentals of offers the sandbox still has, in this process's deployment."""
    from inventory.models import Offer
    from sessions.services import RentalError, rental_create

    out = []
    offers = Offer.objects.visible().filter(gpu_count=1).order_by("?")
    for offer_id in offers.values_list("pk", flat=True)[: n * 4]:
        if len(out) >= n:
            break
        with contextlib.suppress(RentalError):
            out.append(str(rental_create(user=user, offer_id=offer_id, reservation_hours="0.5").rental.pk))
    return out


def _deployment_view() -> dict:
    """What this process's deployment knows: its rentals, their instances, its alerts and the
    other deployments' instances it has listed."""
    from sessions.deployment import deployment_id
    from sessions.models import Alert, AlertKind, ForeignInstance, Rental

    return {
        "deployment": deployment_id(),
        "rentals": {str(r.pk): [r.status, r.provider_instance_id] for r in Rental.objects.all()},
        "orphan_alerts": list(
            Alert.objects.filter(kind=AlertKind.ORPHAN).values_list("provider_instance_id", flat=True)
        ),
        "ghost_alerts": Alert.objects.filter(kind=AlertKind.GHOST).count(),
        "foreign": list(ForeignInstance.objects.values_list("provider_instance_id", flat=True)),
    }


def second_deployment_main(action: str, n: int) -> int:
    """The second deployment's side of deployments_phase (its environment says which database)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "shopper.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from sessions.models import TERMINAL_STATUSES, Rental
    from sessions.services import RentalError, rental_stop

    answer: dict = {}
    if action == "setup":
        call_command("migrate", verbosity=0)
        from inventory.services import offers_refresh

        offers_refresh(force=True)
    elif action == "rent":
        user, _ = get_user_model().objects.get_or_create(username="chaos-b")
        answer["rented"] = _rent(user, n)
    elif action == "stop":
        for rental in Rental.objects.exclude(status__in=TERMINAL_STATUSES):
            with contextlib.suppress(RentalError):
                rental_stop(rental=rental, reason="Done (chaos deployments phase)")
    answer.update(_deployment_view())
    print(json.dumps(answer))
    return 0


def deployments_phase(sandbox, env: dict, tmp: Path, web_port: int, args) -> dict:
    """Deployment A (this process's database and SHOPPER_DEPLOYMENT_ID) and deployment B (its own
    SQLite database, id ``chaosb``, web, worker and safety loop) rent side by side on the same
    sandbox account, each with an orphan of its own; both stacks reconcile for several orphan
    grace periods. Counts the machines of one deployment the other touched (a destroy attempt at
    the sandbox, or the machine gone, before its owner stopped it), the orphans each destroyed and
    the leaks once both are done."""
    import uuid

    from django.contrib.auth import get_user_model

    from sessions.deployment import deployment_id, make_label
    from sessions.models import TERMINAL_STATUSES, Rental, Status
    from sessions.services import RentalError, rental_stop

    n = args.deployment_rentals
    port_b = _free_port()
    dir_b = tmp / "deployment-b"
    dir_b.mkdir(exist_ok=True)
    env_b = dict(env)
    env_b.update(
        DATABASE_URL=f"sqlite:///{dir_b / 'b.sqlite3'}", SHOPPER_DEPLOYMENT_ID=SECOND_DEPLOYMENT_ID,
        SHOPPER_PUBLIC_URL=f"http://127.0.0.1:{port_b}",
    )  # fmt: skip
    env_b.pop("REDIS_URL", None)  # its own queue (the ORM broker in its own database)
    sandbox.set_faults({"rules": []})
    _second(env_b, "setup")
    me = deployment_id()
    user, _ = get_user_model().objects.get_or_create(username="chaos")
    procs_a, procs_b = Procs(env, tmp, web_port), Procs(env_b, dir_b, port_b)
    for name in ("web", "worker", "safety"):
        procs_a.start(name)
        procs_b.start(name)
    started = time.monotonic()
    report: dict = {}
    ours = Rental.objects.filter(created_at__gte=timezone_now())
    try:
        ids_a = _rent(user, n)
        ids_b = _second(env_b, "rent", n)["rented"]
        labels = [make_label(me, uuid.uuid4()), make_label(SECOND_DEPLOYMENT_ID, uuid.uuid4())]
        orphans = sandbox.add_listing_only("vastai", labels)
        orphan_a, orphan_b = str(orphans[0]["id"]), str(orphans[1]["id"])

        def settled() -> tuple[dict, dict]:
            view_b = _second(env_b, "status")
            a = {str(r.pk): [r.status, r.provider_instance_id] for r in Rental.objects.filter(pk__in=ids_a)}
            return a, {k: v for k, v in view_b["rentals"].items() if k in ids_b}

        deadline = time.monotonic() + 240
        in_flight = {"pending", "provisioning", "booting", "verifying"}
        while time.monotonic() < deadline:
            rentals_a, rentals_b = settled()
            if not any(s in in_flight for s, _ in [*rentals_a.values(), *rentals_b.values()]):
                break
            time.sleep(3)
        live_a = {iid for s, iid in rentals_a.values() if s == Status.ACTIVE}
        live_b = {iid for s, iid in rentals_b.values() if s == Status.ACTIVE}
        # Several reconcile cycles past the orphan grace in both deployments.
        grace = float(env.get("SHOPPER_ORPHAN_GRACE_SECONDS", "10"))
        interval = float(env.get("SHOPPER_RECONCILE_INTERVAL_SECONDS", "5"))
        time.sleep(grace + 4 * interval + 5)
        at_sandbox = {str(i["id"]): i for i in sandbox.instances()}
        touched = [
            iid
            for iid in live_a | live_b
            if iid not in at_sandbox or at_sandbox[iid].get("destroy_attempts", 0) > 0
        ]
        rentals_a, rentals_b = settled()
        view_a, view_b = _deployment_view(), _second(env_b, "status")
        report.update(
            deployment_ids=[me, SECOND_DEPLOYMENT_ID],
            deployment_rentals=[len(ids_a), len(ids_b)],
            deployment_active=[len(live_a), len(live_b)],
            deployment_still_active=[
                sum(s == Status.ACTIVE for s, _ in rentals_a.values()),
                sum(s == Status.ACTIVE for s, _ in rentals_b.values()),
            ],
            touched_by_other_deployment=len(touched),
            own_orphans_destroyed=int(orphan_a not in at_sandbox and orphan_a in view_a["orphan_alerts"])
            + int(orphan_b not in at_sandbox and orphan_b in view_b["orphan_alerts"]),
            cross_orphan_alerts=len(set(view_a["orphan_alerts"]) & (live_b | {orphan_b}))
            + len(set(view_b["orphan_alerts"]) & (live_a | {orphan_a})),
            ghosts=[view_a["ghost_alerts"], view_b["ghost_alerts"]],
            foreign_listed=[len(set(view_a["foreign"]) & live_b), len(set(view_b["foreign"]) & live_a)],
        )
        for pk in ours.exclude(status__in=TERMINAL_STATUSES).values_list("pk", flat=True):
            with contextlib.suppress(RentalError):
                rental_stop(rental=Rental.objects.get(pk=pk), reason="Done (chaos deployments phase)")
        _second(env_b, "stop")
        end = time.monotonic() + 120
        while sandbox.instances() and time.monotonic() < end:
            time.sleep(2)
    finally:
        procs_a.stop_all()
        procs_b.stop_all()
    report.update(
        deployment_leaks=len(sandbox.instances()),
        deployment_seconds=round(time.monotonic() - started, 1),
    )
    return report


def timezone_now():
    from django.utils import timezone

    return timezone.now()


def deployments_ok(report: dict, wanted: int) -> bool:
    return (
        report.get("deployment_rentals") == [wanted, wanted]
        and min(report.get("deployment_active") or [0]) > 0  # an offer may fail to rent: not the point
        and report.get("deployment_still_active") == report.get("deployment_active")
        and report.get("touched_by_other_deployment") == 0
        and report.get("cross_orphan_alerts") == 0
        and report.get("own_orphans_destroyed") == 2
        and report.get("foreign_listed") == report.get("deployment_active")[::-1]
        and report.get("deployment_leaks") == 0
    )


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
    parser.add_argument(
        "--grace-rentals", type=int, default=6, help="rentals of the grace phase (0: skip it)"
    )
    parser.add_argument(
        "--listing-lag", type=float, default=75.0, help="Vast listing lag in the grace phase (s)"
    )
    parser.add_argument(
        "--kill-safety-leader",
        action="store_true",
        help="two safety loops; SIGKILL the acting one mid-run and keep it dead (acting_safety_loop)",
    )
    parser.add_argument(
        "--deployment-rentals",
        type=int,
        default=3,
        help="rentals per deployment of the two-deployments phase (0: skip it)",
    )
    parser.add_argument(
        "--deployments-only", action="store_true", help="only the two-deployments phase (deployments_phase)"
    )
    parser.add_argument("--second-deployment", metavar="ACTION", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.deployments_only:  # the main phase with nothing to rent, then this phase alone
        args.rentals, args.grace_rentals = 0, 0
    if args.second_deployment:
        return second_deployment_main(args.second_deployment, args.deployment_rentals)
    if args.kill_idle_workers:
        return run_killed_idle_workers(args)

    tmp = Path(tempfile.mkdtemp(prefix="shopper-chaos-"))
    web_port = _free_port()
    env = chaos_env(
        tmp, web_port, args.rentals + 10,
        SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS="30",  # a driver never repaired is given up within the run
        SHOPPER_DEPLOYMENT_ID="chaosa",  # the deployments phase adds "chaosb" on the same account
    )  # fmt: skip
    sys.path.insert(0, str(ROOT))
    from inventory.sandbox.testing import running_sandbox

    with running_sandbox(tmp, boot_delay=args.boot_delay, faults=FAULTS) as sandbox:
        sandbox_django_setup(env, sandbox, FAULTS)
        from django.contrib.auth import get_user_model

        from sessions.models import TERMINAL_STATUSES, Rental
        from sessions.services import RentalError, rental_create, rental_stop

        user, _ = get_user_model().objects.get_or_create(username="chaos")
        procs = Procs(env, tmp, web_port)
        loops = ("safety", "safety2") if args.kill_safety_leader else ("safety",)
        for name in ("web", "worker", *loops):
            procs.start(name)
        killed_leader = ""
        rng = random.Random(7)
        offers = offers_round_robin(args.rentals * 3)
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
                if i == args.rentals // 3 and args.kill_safety_leader:
                    procs.kill("worker")  # mid-flight: creates in progress die with it
                    procs.start("worker")
                    # The acting loop dies for good: the other must take over (sessions/leader.py).
                    killed_leader = acting_safety_loop(procs)
                    procs.kill(killed_leader)
                elif i == args.rentals // 3:
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
        lags = deadline_lags()
        statuses = {}
        for status in Rental.objects.values_list("status", flat=True):
            statuses[status] = statuses.get(status, 0) + 1
        field_seen = field_faults_seen()
        # Billing starts at active_since, which only a passed GPU check sets (sessions/provisioning.py).
        billed_unverified = Rental.objects.filter(
            active_since__isnull=False, gpu_verified__isnull=True
        ).count()
        per_provider = {
            p: Rental.objects.filter(pk__in=[r.pk for r in created], provider=p).count() for p in PROVIDERS
        }
        report = {
            "rentals": len(created), "rentals_per_provider": per_provider, "refused_at_create": refused,
            "statuses": statuses,
            "field_faults_seen": field_seen, "billed_without_gpu_check": billed_unverified,
            "leaks": len(leaks), "not_terminal": len(not_terminal), "deadlines_enforced": len(lags),
            "worst_deadline_lag_s": round(max(lags, default=0.0), 2),
            "seconds": round(time.monotonic() - started, 1),
        }  # fmt: skip
        if args.kill_safety_leader:
            report["killed_safety_leader"] = killed_leader
        ok_leader = not args.kill_safety_leader or killed_leader in ("safety", "safety2")
        if args.report_lags:
            report["lags"] = lags
        ok = (
            not leaks
            and not not_terminal
            and not billed_unverified
            and report["worst_deadline_lag_s"] <= 60
            and (created or not args.rentals)
            and (args.rentals < len(PROVIDERS) or all(per_provider.values()))  # all four rented
            and ok_leader
        )
        if args.grace_rentals:
            grace = grace_phase(sandbox, env, tmp, web_port, args)
            report.update(grace)
            ok = ok and grace_ok(grace, args.grace_rentals)
        if args.deployment_rentals:
            deployments = deployments_phase(sandbox, env, tmp, web_port, args)
            report.update(deployments)
            ok = ok and deployments_ok(deployments, args.deployment_rentals)
        print(json.dumps(report, indent=2))
        if leaks:
            print("LEAKED:", json.dumps(leaks)[:2000])
        if not_terminal:
            print("NOT TERMINAL:", not_terminal[:20])
        print("CHAOS OK" if ok else f"CHAOS FAILED (logs in {tmp})")
        return 0 if ok else 1


def offers_round_robin(n: int) -> list:
    """Up to ``n`` visible offer ids, taken from every provider in turn (shuffled within each),
    so a run rents from all four even though Vast lists most of the menu."""
    from inventory.models import Offer

    pools = [
        list(Offer.objects.visible().filter(provider=p).order_by("?").values_list("pk", flat=True)[:n])
        for p in PROVIDERS
    ]
    out = []
    for i in range(max((len(p) for p in pools), default=0)):
        out += [pool[i] for pool in pools if i < len(pool)]
    return out[:n]


def acting_safety_loop(procs: Procs, timeout: float = 60) -> str:
    """The name of the safety loop process holding the lease (its holder id carries its pid);
    waits for one to act (the loops may still be starting)."""
    from sessions.leader import lease_current

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lease = lease_current()
        if lease is not None:
            pid = int(lease.holder.split(":")[1])
            for name, proc in procs.procs.items():
                if proc.pid == pid and proc.poll() is None:
                    return name
        time.sleep(0.5)
    raise RuntimeError("no safety loop took the lease")


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
    env = chaos_env(
        tmp, web_port, rentals + 10, REDIS_URL=None, Q_WORKERS="2",
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
        sandbox_django_setup(env, sandbox, IDLE_KILL_FAULTS)
        from django.contrib.auth import get_user_model
        from django.utils import timezone

        from inventory.models import Offer
        from sessions.models import TERMINAL_STATUSES, Alert, AlertKind, Rental, Status
        from sessions.services import RentalError, rental_create, rental_stop

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
        lags = deadline_lags()
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
