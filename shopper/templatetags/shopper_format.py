"""Display filters shared by every page: money amounts, how long ago something happened,
moments in the user's time zone and durations as hours and minutes.

Presentation only: stored amounts and API values keep their exact decimal strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django import template
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.html import format_html

from shopper.middleware import display_zone

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


@register.filter
def when(moment: datetime | None, fmt: str = "Y-m-d H:i"):
    """A moment in the user's time zone with its zone name, and in UTC on hover: every page
    writes times this one way.

    ``<time datetime="2026-12-07T22:05:00+00:00" title="2026-12-07 22:05 UTC" data-when="Y-m-d H:i"
    data-zone="Europe/Berlin">2026-12-07 23:05 UTC+1</time>``

    The zone is written as its UTC offset, not an abbreviation: the browser (which writes pushed
    fragments, below) has no reliable abbreviations ("JST" here, "GMT+9" there).

    The zone is this request's (shopper.middleware.TimeZoneMiddleware). Fragments rendered
    without a request (the live relay, sessions/live.py) come out in UTC without ``data-zone``;
    static/js/app.js rewrites those in the browser's zone, so a pushed fragment reads like the page.
    """
    if not moment:
        return ""
    zone = display_zone()
    utc = moment.astimezone(UTC)
    local = moment.astimezone(zone or UTC)
    return format_html(
        '<time datetime="{}" title="{} UTC" data-when="{}"{}>{} {}</time>',
        utc.isoformat(),
        date_format(utc, fmt),
        fmt,
        format_html(' data-zone="{}"', zone.key) if zone else "",
        date_format(local, fmt),
        offset_label(local),
    )


def offset_label(moment: datetime) -> str:
    """``UTC``, ``UTC+9``, ``UTC-5``, ``UTC+5:30`` for an aware moment (static/js/app.js writes
    the same)."""
    minutes = int(moment.utcoffset().total_seconds() // 60)
    if not minutes:
        return "UTC"
    sign, minutes = ("+" if minutes > 0 else "-"), abs(minutes)
    hours, rest = divmod(minutes, 60)
    return f"UTC{sign}{hours}" + (f":{rest:02d}" if rest else "")


def _seconds(value) -> int | None:
    if value is None or value == "":
        return None
    if hasattr(value, "total_seconds"):
        value = value.total_seconds()
    try:
        return max(0, int(Decimal(str(value))))
    except (InvalidOperation, ValueError):
        return None


@register.filter
def hm(seconds) -> str:
    """Whole seconds (or a timedelta) as hours and minutes: ``2 h 05 min``, ``45 min``; a
    little use reads ``< 1 min`` rather than ``0 min``. Minutes are rounded down, as billed
    seconds are whole seconds counted from the start."""
    total = _seconds(seconds)
    if total is None:
        return ""
    if 0 < total < 60:
        return "< 1 min"
    hours, minutes = divmod(total // 60, 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h {minutes:02d} min"


@register.filter
def elapsed(since: datetime | None, now: datetime | None = None) -> str:
    """Time since ``since`` to the second while it is short: ``45 s``, ``3 min 07 s``; past an
    hour ``1 h 02 min``. The pending page counts it up in the browser (static/js/app.js)."""
    if not since:
        return ""
    total = max(0, int(((now or timezone.now()) - since).total_seconds()))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return hm(total)
