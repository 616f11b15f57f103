"""The audit log (``GET /audit/``, staff only): one timeline over three sources.

* rental events that matter for an audit (transitions, key downloads, extensions, overrides,
  errors) from ``sessions.RentalEvent``;
* API token creations and revocations, from ``ApiToken.created_at`` / ``revoked_at``;
* admin edits (budget changes among them) from Django's ``admin.LogEntry``.

How it stays cheap: the sources live in different tables, so a single SQL ``ORDER BY`` over them
would need a UNION of unlike rows. Instead each source is queried with every filter (who, what,
when) applied in SQL, ordered newest first on an indexed timestamp and limited to
``page × PAGE_SIZE`` rows: whatever the merge puts on page N must be among the first N × 50 rows
of its own source. The few hundred rows are merged in Python (``heapq.merge``) and page N is
sliced out. Counts are one ``COUNT`` per source. Pages are capped at ``MAX_PAGE``, so a request
never reads more than ``MAX_PAGE × PAGE_SIZE`` rows per source; narrow the filters to go further
back.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import islice
from urllib.parse import urlencode

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.http import QueryDict
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_date

from sessions.models import EventKind, RentalEvent
from shopper.models import ApiToken

PAGE_SIZE = 50
MAX_PAGE = 200
MAX_WHO_LENGTH = 150

# What the "what" filter offers, in display order; each maps to one source.
EVENT_KINDS = (
    EventKind.TRANSITION,
    EventKind.KEY_DOWNLOAD,
    EventKind.EXTEND,
    EventKind.OVERRIDE,
    EventKind.ERROR,
)
TOKEN, ADMIN = "token", "admin"
KINDS = (*[str(k) for k in EVENT_KINDS], TOKEN, ADMIN)
ADMIN_ACTIONS = {ADDITION: "added", CHANGE: "changed", DELETION: "deleted"}


@dataclass(frozen=True)
class Entry:
    at: datetime
    who: str  # username, or "" for the system
    what: str  # one of KINDS
    summary: str
    subject: str = ""
    link: str = ""


@dataclass
class Filters:
    who: str = ""
    what: str = ""
    date_from: date | None = None
    date_to: date | None = None
    page: int = 1
    errors: list[str] | None = None

    @property
    def query(self) -> str:
        """The filters as a query string (without the page), for the pager's links."""
        params = {
            "who": self.who,
            "what": self.what,
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
        }
        return urlencode({k: v for k, v in params.items() if v})

    @property
    def start(self) -> datetime | None:
        return _day_start(self.date_from) if self.date_from else None

    @property
    def end(self) -> datetime | None:
        """Exclusive: the start of the day after ``date_to`` (the "to" day is included)."""
        return _day_start(self.date_to + timedelta(days=1)) if self.date_to else None


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_default_timezone())


def _parse_day(raw: str, label: str, errors: list[str]) -> date | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        day = parse_date(raw)
    except ValueError:  # well formed but impossible, e.g. 2025-02-30
        day = None
    if day is None or not 1 <= day.year <= 9998:
        errors.append(f"Ignored “{label}”: “{raw[:30]}” is not a date (use YYYY-MM-DD).")
        return None
    return day


def parse_filters(params: QueryDict) -> Filters:
    """The filters of the query string. A bad value is dropped with a message, never an error."""
    errors: list[str] = []
    who = params.get("who", "").strip()
    if len(who) > MAX_WHO_LENGTH:
        errors.append("Ignored “who”: a username is at most 150 characters.")
        who = ""
    what = params.get("what", "").strip()
    if what and what not in KINDS:
        errors.append(f"Ignored “what”: “{what[:30]}” is not one of {', '.join(KINDS)}.")
        what = ""
    date_from = _parse_day(params.get("from", ""), "from", errors)
    date_to = _parse_day(params.get("to", ""), "to", errors)
    if date_from and date_to and date_from > date_to:
        errors.append("Ignored the dates: “from” is after “to”.")
        date_from = date_to = None
    raw_page = params.get("page", "1").strip() or "1"
    try:
        page = int(raw_page)
    except ValueError:
        errors.append(f"Ignored “page”: “{raw_page[:30]}” is not a number.")
        page = 1
    if page < 1:
        errors.append("Ignored “page”: pages start at 1.")
        page = 1
    if page > MAX_PAGE:
        errors.append(f"Showing page {MAX_PAGE}, the last one kept: narrow the filters to look further back.")
        page = MAX_PAGE
    return Filters(who=who, what=what, date_from=date_from, date_to=date_to, page=page, errors=errors)


# --------------------------------------------------------------------------------------------
# Sources: each returns (count, newest-first iterator of at most `limit` entries)
# --------------------------------------------------------------------------------------------
def _window(qs, field: str, f: Filters):
    if f.start:
        qs = qs.filter(**{f"{field}__gte": f.start})
    if f.end:
        qs = qs.filter(**{f"{field}__lt": f.end})
    return qs


def _events(f: Filters, limit: int) -> tuple[int, Iterator[Entry]]:
    kinds = [f.what] if f.what else [str(k) for k in EVENT_KINDS]
    qs = _window(RentalEvent.objects.filter(kind__in=kinds), "at", f)
    if f.who:
        qs = qs.filter(actor__username=f.who)
    count = qs.count()
    rows = qs.select_related("actor", "rental").order_by("-at", "-id")[:limit]

    def entries() -> Iterator[Entry]:
        for e in rows:
            yield Entry(
                at=e.at,
                who=e.actor.get_username() if e.actor else "",
                what=e.kind,
                summary=str(e),
                subject=f"{e.rental.label} ({e.rental.gpu_count}× {e.rental.gpu_type})",
                link=reverse("sessions:detail", args=[e.rental_id]),
            )

    return count, entries()


def _tokens(f: Filters, field: str, limit: int) -> tuple[int, Iterator[Entry]]:
    """Token creations (``field`` = created_at) or revocations (``revoked_at``)."""
    qs = _window(ApiToken.objects.filter(**{f"{field}__isnull": False}), field, f)
    if f.who:
        qs = qs.filter(user__username=f.who)
    count = qs.count()
    rows = qs.select_related("user").order_by(f"-{field}", "-id")[:limit]
    verb = "created" if field == "created_at" else "revoked"

    def entries() -> Iterator[Entry]:
        for t in rows:
            yield Entry(
                at=getattr(t, field),
                who=t.user.get_username(),
                what=TOKEN,
                summary=f"API token {verb}: “{t.name}” ({t.prefix}…)",
                subject=f"token #{t.pk}",
            )

    return count, entries()


def _admin(f: Filters, limit: int) -> tuple[int, Iterator[Entry]]:
    qs = _window(LogEntry.objects.all(), "action_time", f)
    if f.who:
        qs = qs.filter(user__username=f.who)
    count = qs.count()
    rows = qs.select_related("user", "content_type").order_by("-action_time", "-id")[:limit]

    def entries() -> Iterator[Entry]:
        for le in rows:
            model = le.content_type.name if le.content_type else "object"
            change = le.get_change_message()
            summary = f"Admin {ADMIN_ACTIONS.get(le.action_flag, 'edited')} {model} “{le.object_repr}”"
            yield Entry(
                at=le.action_time,
                who=le.user.get_username(),
                what=ADMIN,
                summary=f"{summary}: {change}" if change else summary,
                subject=model,
                link=(le.get_admin_url() or "") if le.action_flag != DELETION else "",
            )

    return count, entries()


@dataclass
class Page:
    entries: list[Entry]
    number: int
    total: int
    page_size: int = PAGE_SIZE

    @property
    def num_pages(self) -> int:
        return max(1, min(MAX_PAGE, -(-self.total // self.page_size)))

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.num_pages

    @property
    def previous_page_number(self) -> int:
        return self.number - 1

    @property
    def next_page_number(self) -> int:
        return self.number + 1


def audit_page(f: Filters, page_size: int = PAGE_SIZE) -> Page:
    """Page ``f.page`` of the merged log, newest first (see the module docstring)."""
    limit = f.page * page_size
    sources = []
    if not f.what or f.what in EVENT_KINDS:
        sources.append(_events(f, limit))
    if not f.what or f.what == TOKEN:
        sources.append(_tokens(f, "created_at", limit))
        sources.append(_tokens(f, "revoked_at", limit))
    if not f.what or f.what == ADMIN:
        sources.append(_admin(f, limit))
    total = sum(count for count, _ in sources)
    merged = heapq.merge(*(rows for _, rows in sources), key=lambda e: e.at, reverse=True)
    entries = list(islice(merged, limit - page_size, limit))
    return Page(entries=entries, number=f.page, total=total, page_size=page_size)


def audit_context(params: QueryDict) -> dict:
    f = parse_filters(params)
    errors = list(f.errors or [])
    if f.who and not get_user_model().objects.filter(username=f.who).exists():
        errors.append(f"No user named “{f.who[:50]}”: nothing to show for them.")
    page = audit_page(f)
    if f.page > page.num_pages and page.total:
        errors.append(f"There are only {page.num_pages} page(s): showing none of page {f.page}.")
    return {"filters": f, "page": page, "errors": errors, "kinds": KINDS, "query": f.query}
