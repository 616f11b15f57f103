"""The safety loop: deadlines every few seconds, reconciliation every ≤ 60 s, and recovery at
start. It runs beside the django-q2 worker because the scheduler's one-minute resolution plus
its polling would let a deadline slip past a minute (safety rule 4 asks for under 60 s)."""

from __future__ import annotations

import logging
import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from sessions.lifecycle import lifecycle_enforce
from sessions.reconcile import destroys_stuck_alert, reconcile_all, recover_on_start
from sessions.services import rentals_resume_provisioning, rentals_resume_stopping
from sessions.stalled import queue_stalled_takeover

log = logging.getLogger("sessions.safety")


class Command(BaseCommand):
    help = "Enforce deadlines, reconcile with providers and resume interrupted work, in a loop."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Run one pass of every job and exit.")

    def handle(self, *args, once: bool = False, **options):
        self.running = True
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        recovered = self.recover()
        next_reconcile = time.monotonic() + settings.SHOPPER_RECONCILE_INTERVAL_SECONDS
        while self.running:
            if not recovered:
                recovered = self.recover()  # retried each pass: deadlines are enforced meanwhile
            self.tick(reconcile_now=once or time.monotonic() >= next_reconcile)
            if once:
                return
            if time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + settings.SHOPPER_RECONCILE_INTERVAL_SECONDS
            time.sleep(settings.SHOPPER_LIFECYCLE_INTERVAL_SECONDS)

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
        jobs = [("lifecycle", lifecycle_enforce), ("destroy alerts", destroys_stuck_alert)]
        # Teardowns the task queue did not start in time are run here (bounded per pass).
        jobs.append(("stalled queue", queue_stalled_takeover))
        if reconcile_now:
            jobs += [
                ("reconcile", reconcile_all),
                ("resume stopping", rentals_resume_stopping),
                # A worker that died mid-way (or a task the broker lost) left its lease to expire.
                ("resume provisioning", rentals_resume_provisioning),
            ]
        for name, job in jobs:
            try:
                result = job()
            except Exception:
                log.exception("safety loop: %s failed", name)
                continue
            if result:
                log.info("safety loop: %s: %s", name, result)

    def _stop(self, signum, frame):
        self.running = False
