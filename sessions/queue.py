"""Handing background work (provisioning, teardown) to the task queue.

Every caller uses :func:`enqueue`. Where the work goes is the SHOPPER_TASK_QUEUE setting (a dotted
path or a callable), like Django's EMAIL_BACKEND: django-q2 in production, a recorder or an inline
runner in tests (tests/fakes.py), which set the setting instead of patching this module.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string


def enqueue(func: str, *args: Any) -> None:
    """Hand ``func`` (a dotted path, e.g. ``sessions.tasks.teardown``) and its arguments over."""
    backend = settings.SHOPPER_TASK_QUEUE
    (import_string(backend) if isinstance(backend, str) else backend)(func, *args)


def django_q_enqueue(func: str, *args: Any) -> None:
    """The production queue: django-q2, after recording the hand-over for the safety loop."""
    from django_q.tasks import async_task

    kind = func.rsplit(".", 1)[-1]
    if kind in ("provision", "teardown") and args:
        # Recorded before the hand-over (a worker may start it at once): the safety loop acts
        # itself when the queue does not start it in time (sessions/stalled.py).
        from sessions.stalled import work_queued

        work_queued(args[0], kind)
    async_task(
        func, *args, q_options={"task_name": f"{func.rsplit('.', 1)[-1]}-{args[0] if args else ''}"[:100]}
    )
