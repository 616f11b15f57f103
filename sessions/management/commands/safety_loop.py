"""The safety loop: deadlines every few seconds, reconciliation every ≤ 60 s, and recovery at
start. It runs beside the django-q2 worker because the scheduler's one-minute resolution plus
its polling would let a deadline slip past a minute (safety rule 4 asks for under 60 s).

Several loops may run (one per host); only the one holding the lease acts (sessions/leader.py),
the others check every interval and take over when the acting one stops renewing it. Start-up
recovery runs whenever a loop starts acting: the loop before it may have died half-way."""

from __future__ import annotations

import logging
import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from sessions.balances import balances_check
from sessions.idle import idle_enforce
from sessions.leader import holder_id, lease_hold, lease_release
from sessions.lifecycle import lifecycle_enforce
from sessions.provisioning import rentals_resume_provisioning
from sessions.reconcile import destroys_stuck_alert, reconcile_all, recover_on_start
from sessions.stalled import queue_stalled_takeover
from sessions.teardown import rentals_resume_stopping

log = logging.getLogger("sessions.safety")


class Command(BaseCommand):
    help = "Enforce deadlines, reconcile with providers and resume interrupted work, in a loop."

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.holder = holder_id()  # this process's name on the lease (sessions/leader.py)

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Run one pass of every job and exit.")

    def handle(self, *args, once: bool = False, **options):
        self.running = True
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.stdout.write(f"safety loop {self.holder}: started")
        acting: bool | None = None  # unknown until the first look at the lease
        recovered = False
        next_reconcile = 0.0
        try:
            while self.running:
                now_acting = self.hold()
                if now_acting != acting:
                    state = "acting" if now_acting else "standing by"
                    self.stdout.write(f"safety loop {self.holder}: {state}")
                    self.stdout.flush()
                    # Whoever acted before may have died half-way: recover as at start.
                    recovered = False
                acting = now_acting
                if acting:
                    if not recovered:
                        # Retried each pass until it works: deadlines are enforced meanwhile.
                        recovered = self.recover()
                        next_reconcile = time.monotonic() + settings.SHOPPER_RECONCILE_INTERVAL_SECONDS
                    self.tick(reconcile_now=once or time.monotonic() >= next_reconcile)
                    if time.monotonic() >= next_reconcile:
                        next_reconcile = time.monotonic() + settings.SHOPPER_RECONCILE_INTERVAL_SECONDS
                if once:
                    return
                time.sleep(settings.SHOPPER_LIFECYCLE_INTERVAL_SECONDS)
        finally:
            if acting:
                self.release()

    def hold(self) -> bool:
        """Take or renew the lease; a database error means standing by (never acting blind)."""
        try:
            return lease_hold(self.holder)
        except Exception:
            log.exception("safety loop: could not read the lease; standing by this pass")
            return False

    def release(self) -> None:
        try:
            lease_release(self.holder)
        except Exception:
            log.exception("safety loop: could not release the lease; it expires by itself")

    def recover(self) -> bool:
        """Start-up recovery; a failure is logged and never keeps deadlines from being enforced."""
        try:
            summary = recover_on_start()
        except Exception:
            log.exception("safety loop: start-up recovery failed; retrying on the next pass")
            return False
        self.stdout.write(
            f"recovery: {summary['provisioning_resumed']} provisioning and "
            f"{summary['teardowns_resumed']} teardowns resumed (deployment {summary.get('deployment', '?')})"
        )
        return True

    def tick(self, *, reconcile_now: bool) -> None:
        """One pass; an error in one job is logged and never stops the loop."""
        jobs = [
            ("lifecycle", lifecycle_enforce),
            ("idle stop", idle_enforce),
            ("destroy alerts", destroys_stuck_alert),
        ]
        # Teardowns the task queue did not start in time are run here (bounded per pass).
        jobs.append(("stalled queue", queue_stalled_takeover))
        if reconcile_now:
            jobs += [
                ("reconcile", reconcile_all),
                ("resume stopping", rentals_resume_stopping),
                # A worker that died mid-way (or a task the broker lost) left its lease to expire.
                ("resume provisioning", rentals_resume_provisioning),
                # Balances are read with each reconcile (alerts, and the check at rent time).
                ("balances", balances_check),
            ]
        for name, job in jobs:
            # Renewed before each job: a loop that lost the lease (paused past it, or the database
            # briefly away) stops at once instead of finishing its pass beside the new leader.
            if not self.hold():
                log.warning("safety loop: lease lost before %s; standing by", name)
                return
            try:
                result = job()
            except Exception:
                log.exception("safety loop: %s failed", name)
                continue
            if result:
                log.info("safety loop: %s: %s", name, result)

    def _stop(self, signum, frame):
        self.running = False
