"""The periodic jobs of the django-q2 worker, in one table. ``manage.py sync_schedules`` upserts
them by name and removes the managed ones (``MANAGED_PREFIXES``) no longer listed.

Each job runs every ``minutes`` minutes: django-q2 schedules have one-minute resolution. Safety
work that must be quicker than that (deadlines every few seconds, reconciliation, start-up
recovery, idle stop, provider balances, taking over a stalled queue) is not here: ``manage.py
safety_loop`` runs it beside the worker, one loop acting at a time (sessions/leader.py; DESIGN.md
Background work).
"""

from __future__ import annotations

SCHEDULES: list[dict] = [
    # name == "<app>.<task>" (greppable), dotted function, every N minutes
    # offers_refresh itself honours the 60 s cache and the rate-limit backoff per provider.
    {"name": "inventory.refresh_offers", "func": "inventory.tasks.refresh_offers", "minutes": 1},
    {"name": "sessions.resume_stopping", "func": "sessions.tasks.resume_stopping", "minutes": 1},
    {"name": "costs.accrue", "func": "costs.tasks.accrue", "minutes": 1},
    {"name": "costs.check_budgets", "func": "costs.tasks.check_budgets", "minutes": 1},
    {"name": "sessions.health_checks", "func": "sessions.tasks.health_checks", "minutes": 1},
]

MANAGED_PREFIXES = ("inventory.", "sessions.", "costs.", "shopper.")
