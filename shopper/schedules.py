"""Every periodic job, in one table. ``manage.py sync_schedules`` upserts them by name.

Intervals are in seconds (django-q2 schedules have minute resolution, so sub-minute jobs use
the "seconds" field of a MINUTES schedule rounded up to one minute; the lifecycle loop that must
beat a 60 s deadline runs in the worker itself — see DESIGN.md Background work).
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
