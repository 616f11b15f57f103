"""django-q2 entry points for inventory; thin: they call one service."""

from __future__ import annotations

from inventory.services import offers_refresh


def refresh_offers() -> str:
    results = offers_refresh()
    return ", ".join(f"{r.provider}: {r.outcome} ({r.offers})" for r in results)
