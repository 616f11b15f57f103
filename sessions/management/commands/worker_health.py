"""The worker's healthcheck (docker-compose.yml, `make run`): exits 1 when the task queue stopped
moving — work handed to it ``--max-age`` seconds ago (a probe task this command enqueued on an
earlier run, or a rental's provisioning or teardown) has not started while no worker is busy on
a rental. Each run then enqueues a new probe for the next run to look at.

Why a queue can stop while its processes look alive: sessions/stalled.py. Money never waits for
this check: the safety loop runs stalled teardowns itself."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from sessions.stalled import probe_enqueue, probes_prune, queue_health


class Command(BaseCommand):
    help = "Exit non-zero when the task queue stopped moving (the worker's healthcheck)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--max-age",
            type=float,
            default=None,
            help="seconds queued work may wait for a free worker (default SHOPPER_QUEUE_STALL_SECONDS)",
        )
        parser.add_argument("--no-probe", action="store_true", help="only look; enqueue no probe")

    def handle(self, *args, max_age: float | None = None, no_probe: bool = False, **options):
        max_age = settings.SHOPPER_QUEUE_STALL_SECONDS if max_age is None else max_age
        healthy, why = queue_health(max_age_seconds=max_age)
        if not no_probe:
            probes_prune()
            probe_enqueue()
        if not healthy:
            self.stderr.write(f"UNHEALTHY: {why}")
            raise SystemExit(1)
        self.stdout.write(f"healthy: {why}")
