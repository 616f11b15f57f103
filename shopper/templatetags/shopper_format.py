"""Display filters shared by every page: money amounts and how long ago something happened.

Presentation only: stored amounts and API values keep their exact decimal strings.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django import template
from django.utils import timezone

register = template.Library()

CENT = Decimal("0.01")


@register.filter
def money(amount, billed=None) -> str:
    """``$12.34``; a charge under a cent reads ``< $0.01`` instead of a misleading ``$0.00``.

    Amounts are usually rounded to the cent before they reach a page, so a few seconds of use
    arrive as 0.00. ``billed`` (e.g. the rental's billed seconds) says something was charged
    all the same: then a zero amount also reads ``< $0.01``.
    """
    if amount is None or amount == "":
        return ""
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        return str(amount)
    if 0 < value < CENT or (value == 0 and billed):
        return "< $0.01"
    return f"${value.quantize(CENT, rounding=ROUND_HALF_UP)}"


@register.filter
def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """How long ago, in words: "just now" under a minute, then "3 min ago", "2 h ago", "4 d ago"
    (whole units, rounded down)."""
    if not moment:
        return ""
    seconds = ((now or timezone.now()) - moment).total_seconds()
    if seconds < 60:  # also a moment slightly in the future: clocks of two machines
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"
