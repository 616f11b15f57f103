"""Work handed to the task queue that never started: the safety loop does not wait for it.

django-q2's cluster can stop moving for good while looking alive: when a worker process is
SIGKILLed while idle it dies inside ``multiprocessing.Queue.get()`` holding the queue's reader
lock (a process-shared semaphore, ``Queue._rlock``); the cluster's guard "reincarnates" the
worker, but the new one (and every other) blocks forever on that lock, while the pusher and the
scheduler keep taking tasks from the broker. Whatever the cause, nothing that stops spending may
depend on the queue (DESIGN.md amendments), so:

- ``enqueue`` records on the rental when provisioning or teardown was handed to the queue
  (``provision_queued_at`` / ``teardown_queued_at``, only if not already set: re-enqueues by the
  sweeps do not reset the clock) and the task clears it when it starts (``work_started``);
- ``queue_stalled_takeover`` (every safety-loop pass) finds work not started within
  ``SHOPPER_QUEUE_STALL_SECONDS``, raises one ``queue_stalled`` alert (resolved when a task
  starts again) and acts:
    * a stopping rental: the loop runs the teardown itself (while the alert is open, without
      waiting out the bound again), within ``SHOPPER_QUEUE_TAKEOVER_SECONDS``
      per pass in all (deadlines keep being enforced between passes); the teardown lease keeps it
      from running twice when the queued task starts after all;
    * a rental whose provisioning never started, only when no worker is busy on any rental (a
      long backlog behind busy workers is not a stall): ``pending`` has sent no create (the task
      moves it to ``provisioning`` first, compare-and-swap), so it is failed, safely and at once,
      and the user can rent again; one already past ``pending`` (a resume that never started)
      may have an instance, so it is stopped and its teardown run by the loop like the above.
    Provisioning is never run from the loop: it takes minutes (boot, SSH) and would hold up
    deadlines.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from sessions.alerts import alert_raise
from sessions.models import IN_FLIGHT_STATUSES, Alert, AlertKind, EventKind, QueueProbe, Rental, Status
from sessions.services import (
    AlreadyEnded,
    rental_event,
    rental_stop,
    rental_transition,
)
from sessions.teardown import rental_teardown
from sessions.waits import PRODUCTION, Waits

log = logging.getLogger("sessions.safety")
S = Status
MARKERS = {"provision": "provision_queued_at", "teardown": "teardown_queued_at"}
LEASES = {"provision": "provision_claimed_until", "teardown": "teardown_claimed_until"}
# Each stalled teardown gets at most this much of a pass: one whose destroy keeps failing must
# not keep the others waiting (the order is shuffled every pass for the same reason).
PER_RENTAL_SECONDS = 10.0


def _clock() -> float:
    return time.monotonic()


def work_queued(rental_id, kind: str) -> None:
    """Record that ``kind`` work for the rental was handed to the queue (kept if already set)."""
    Rental.objects.filter(pk=rental_id, **{f"{MARKERS[kind]}__isnull": True}).update(
        **{MARKERS[kind]: timezone.now()}
    )


def work_started(rental_id, kind: str) -> None:
    """A task for the rental started: the queue moves. Clears the marker and the open alert."""
    Rental.objects.filter(pk=rental_id).exclude(**{f"{MARKERS[kind]}__isnull": True}).update(
        **{MARKERS[kind]: None}
    )
    queue_moved()


def queue_moved() -> None:
    Alert.objects.filter(kind=AlertKind.QUEUE_STALLED, resolved_at__isnull=True).update(
        resolved_at=timezone.now()
    )


def _lease_free(kind: str, now) -> Q:
    return Q(**{f"{LEASES[kind]}__isnull": True}) | Q(**{f"{LEASES[kind]}__lt": now})


def workers_busy(now=None) -> bool:
    """Some worker holds a live provisioning or teardown lease: it is working (renewing it)."""
    now = now or timezone.now()
    return Rental.objects.filter(
        Q(provision_claimed_until__gt=now) | Q(teardown_claimed_until__gt=now)
    ).exists()


def stalled_work(now=None) -> dict[str, list]:
    """Rentals whose queued work has not started within the bound (ids, oldest first)."""
    now = now or timezone.now()
    limit = now - timedelta(seconds=settings.SHOPPER_QUEUE_STALL_SECONDS)
    # While the queue is known to be stalled (its alert is open: no task started since), a new
    # teardown does not wait out the bound again: the loop takes it on its next pass.
    known_stalled = Alert.objects.filter(kind=AlertKind.QUEUE_STALLED, resolved_at__isnull=True).exists()
    teardowns = list(
        Rental.objects.filter(status=S.STOPPING, teardown_queued_at__lte=now if known_stalled else limit)
        .filter(_lease_free("teardown", now))
        .order_by("teardown_queued_at")
        .values_list("pk", flat=True)
    )
    provisions = list(
        Rental.objects.filter(status__in=IN_FLIGHT_STATUSES, provision_queued_at__lt=limit)
        .filter(_lease_free("provision", now))
        .order_by("provision_queued_at")
        .values_list("pk", flat=True)
    )
    return {"teardown": teardowns, "provision": provisions}


def _alert(stalled: dict[str, list]) -> None:
    cluster = settings.Q_CLUSTER.get("name", "")
    alert_raise(
        AlertKind.QUEUE_STALLED,
        f"The task queue (django-q2 cluster '{cluster}') did not start queued work within "
        f"{settings.SHOPPER_QUEUE_STALL_SECONDS} s: {len(stalled['teardown'])} teardown(s), "
        f"{len(stalled['provision'])} provisioning. The safety loop runs the teardowns itself; "
        "check the worker (`manage.py worker_health`) and restart it.",
        provider="django-q2",
        provider_instance_id=cluster,
    )


def queue_stalled_takeover(
    *, budget_seconds: float | None = None, waits: Waits = PRODUCTION
) -> dict[str, int]:
    """One safety-loop pass over stalled queued work (see the module docstring); ``waits`` is
    handed to the teardowns it runs itself."""
    budget = settings.SHOPPER_QUEUE_TAKEOVER_SECONDS if budget_seconds is None else budget_seconds
    now = timezone.now()
    stalled = stalled_work(now)
    if not stalled["teardown"] and not stalled["provision"]:
        return {}
    if stalled["provision"] and workers_busy(now):
        stalled["provision"] = []  # a backlog behind busy workers, not a stall
    if not stalled["teardown"] and not stalled["provision"]:
        return {}
    _alert(stalled)
    bound = settings.SHOPPER_QUEUE_STALL_SECONDS
    failed = stopped = 0
    teardowns = list(stalled["teardown"])
    for rental in Rental.objects.filter(pk__in=stalled["provision"]):
        if rental.status == S.PENDING:
            failed += rental_transition(
                rental,
                S.FAILED,
                reason=f"The task queue did not start provisioning within {bound} s; nothing was "
                "created (it never left pending). Rent again.",
                ended_at=timezone.now(),
            )
            continue
        try:
            moved = rental_stop(
                rental=rental,
                reason=f"The task queue did not resume provisioning within {bound} s; stopping "
                "the machine that may exist",
            )
        except AlreadyEnded:
            continue
        stopped += moved
        if moved:
            teardowns.append(rental.pk)
    # Shuffled: fair to every stalled teardown over a few passes whatever their destroys do.
    teardowns = list(Rental.objects.filter(pk__in=teardowns).order_by("?").values_list("pk", flat=True))
    deadline = _clock() + budget
    done = ran = 0
    for rental_id in teardowns:
        left = deadline - _clock()
        if left <= 0:
            break
        rental = Rental.objects.get(pk=rental_id)
        queued = rental.teardown_queued_at.isoformat() if rental.teardown_queued_at else ""
        if not rental.events.filter(kind=EventKind.WARNING, data__queue_stalled=queued).exists():
            rental_event(  # once per stall, not on every pass
                rental,
                EventKind.WARNING,
                f"The task queue did not start the teardown within {bound} s; the safety loop runs it",
                data={"queue_stalled": queued},
            )
        ran += 1
        done += rental_teardown(
            rental_id=rental_id, budget_seconds=min(left, PER_RENTAL_SECONDS), waits=waits
        )
    summary = {
        "teardowns_run": ran,
        "destroyed": done,
        "pending_failed": failed,
        "provisioning_stopped": stopped,
    }
    log.warning("task queue stalled: %s", summary)
    return summary


def probe_enqueue() -> QueueProbe:
    """Hand a tiny task to the queue; ``queue_health`` checks later that it started."""
    from django_q.tasks import async_task

    probe = QueueProbe.objects.create()
    async_task("sessions.tasks.queue_probe", probe.pk, q_options={"task_name": f"queue-probe-{probe.pk}"})
    return probe


def probe_started(probe_id: int) -> None:
    QueueProbe.objects.filter(pk=probe_id, started_at__isnull=True).update(started_at=timezone.now())
    queue_moved()


def queue_health(*, max_age_seconds: float, now=None) -> tuple[bool, str]:
    """(healthy, why). Unhealthy when work handed to the queue more than ``max_age_seconds`` ago
    has not started while no worker is busy on a rental: the newest probe that old, or a
    rental's provisioning or teardown. Lost old probes (a broker restart) do not count: only the
    newest one older than the bound is looked at."""
    now = now or timezone.now()
    limit = now - timedelta(seconds=max_age_seconds)
    problems = []
    probe = QueueProbe.objects.filter(enqueued_at__lt=limit).order_by("-enqueued_at").first()
    if probe is not None and probe.started_at is None:
        problems.append(
            f"probe {probe.pk} queued {(now - probe.enqueued_at).total_seconds():.0f} s ago has not started"
        )
    for kind, marker in MARKERS.items():
        oldest = (
            Rental.objects.filter(status__in=[*IN_FLIGHT_STATUSES, S.STOPPING], **{f"{marker}__lt": limit})
            .order_by(marker)
            .values_list(marker, flat=True)
            .first()
        )
        if oldest is not None:
            problems.append(f"{kind} queued {(now - oldest).total_seconds():.0f} s ago has not started")
    if not problems:
        return True, "the task queue moves"
    if workers_busy(now):
        return True, "workers are busy on rentals (" + "; ".join(problems) + ")"
    return False, "the task queue stopped moving: " + "; ".join(problems)


def probes_prune(now=None) -> int:
    """Keep the probe table small: an hour of history is plenty."""
    now = now or timezone.now()
    deleted, _ = QueueProbe.objects.filter(enqueued_at__lt=now - timedelta(hours=1)).delete()
    return deleted
