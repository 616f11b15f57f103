"""The offer menu in this process's memory: filter, sort and page any query without the database.

Why: the menu changes only when a refresh lands (about once a minute), yet every query string a
person or script sends is new to the page cache, and answering one from the database cost ~21 ms
of CPU (SQL, queryset building, row conversion): 87 req/s at 10k offers, 18 at 100k. Here the
visible offers are held as numpy columns, rebuilt once per menu version, with one precomputed
order per sort; a query is a few vectorised comparisons and one slice (well under 1 ms at 100k).

Exactness: the answers are those of ``OfferFilterSet`` + ``OfferSerializer`` over
``Offer.objects.visible()``; ``tests/inventory/test_menu.py`` holds the two equal over many
random queries on SQLite (and PostgreSQL when reachable). How each filter keeps the database's
semantics:

- numbers and money are integers scaled by 10^4 (Decimal(10, 4) columns), compared exactly;
- ``icontains`` is matched against the few distinct names in Python when both are ASCII (where
  SQLite's LIKE and PostgreSQL's UPPER agree with ``str.lower``); anything else is asked of the
  database once per menu version and term (``allow_db``), or declined (``None``) where the
  caller may not block (the ASGI fast path), which then hands the request to Django;
- NULL reliability sorts where the backend puts it (``nulls_order_largest``);
- ``hidden_until`` (suppression after failed provisions, which does not bump the menu version)
  is re-read on every version check and compared with the request's ``now``.

No thundering herd: ``MenuHolder`` lets one thread check the version (every
``CHECK_SECONDS``) and rebuild; every other request meanwhile serves the previous menu. Only the
very first request of a process waits, for that one build.

To add a column (a later issue adds value figures, confidence): add it to
``serializers.OFFER_FIELDS`` (rows) and, if it is filtered or sorted on, to ``NUMERIC`` below
(or to ``DERIVED`` if the column is computed from another at build time, like the CUDA version's
number).
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
from django.db import close_old_connections, connection

from inventory.filters import NULLS_LAST, SORTS, version_key
from inventory.models import Offer
from inventory.serializers import OFFER_FIELDS, offer_rows
from inventory.services import menu_version

log = logging.getLogger(__name__)

# How often a process asks the database for the menu version (and the suppressed offers):
# a refresh or a suppression shows up here at most this much later (plus one rebuild).
CHECK_SECONDS = 1.0

# Rendered answers kept per menu (repeated queries): bounded, dropped with the menu.
MAX_ANSWERS = 4096
# Columns filtered or sorted on, as int64: name -> scale (10^4 for Decimal(…, 4) columns).
NUMERIC = {
    "id": 1,
    "gpu_count": 1,
    "vram_gb": 1,
    "price_per_hour": 10_000,
    "price_per_gpu_hour": 10_000,
    "reliability": 10_000,
    "max_disk_gb": 1,
    "inet_down_mbps": 1,
    "inet_up_mbps": 1,
    "verified": 1,
    "datacenter": 1,
    "max_duration_hours": 1,
}
# Columns computed at build time from a text column: name -> (source column, function).
DERIVED = {"cuda_key": ("cuda_version", version_key), "driver_key": ("driver_version", version_key)}
# Text columns matched with icontains: held as codes into their distinct values.
TEXT = ("gpu_type", "location", "provider")
# Stands for NULL in an int64 column; the sort places it per backend.
NULL = np.iinfo(np.int64).min
# The filters of OfferFilterSet: name -> (column, comparison). Kept in step with filters.py.
RANGE_FILTERS = {
    "min_gpus": ("gpu_count", "gte"),
    "min_vram_gb": ("vram_gb", "gte"),
    "max_price": ("price_per_hour", "lte"),
    "min_reliability": ("reliability", "gte"),
    "min_reliability_pct": ("reliability", "gte"),
    "min_inet_down_mbps": ("inet_down_mbps", "gte"),
    "min_inet_up_mbps": ("inet_up_mbps", "gte"),
    "min_disk_gb": ("max_disk_gb", "gte"),
    "min_duration_hours": ("max_duration_hours", "gte"),
}
# Filters given in percent of their column's 0-1 value.
PERCENT_FILTERS = {"min_reliability_pct"}
VERSION_FILTERS = {"min_cuda": "cuda_key", "min_driver": "driver_key"}
FLAG_FILTERS = {"verified": "verified", "datacenter": "datacenter"}
TEXT_FILTERS = {"gpu": "gpu_type", "location": "location"}
# Columns whose values repeat across offers (kept once in memory, see build_menu).
SHARED_VALUES = {
    "provider",
    "gpu_type",
    "location",
    "cuda_version",
    "driver_version",
    "fetched_at",
    "reliability",
}
FILTERED_COLUMNS = tuple(
    dict.fromkeys(
        (
            *(c for c, _ in RANGE_FILTERS.values()),
            *TEXT_FILTERS.values(),
            "provider",
            *VERSION_FILTERS.values(),
            *FLAG_FILTERS.values(),
        )
    )
)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_us(at: datetime | None) -> int:
    """Microseconds since the epoch, exactly (no float), so comparisons match the database's."""
    return 0 if at is None else (at - EPOCH) // timedelta(microseconds=1)


@dataclass
class OfferRow:
    """What the offers page template reads of an offer (the same values a model instance has)."""

    pk: int
    provider: str
    provider_offer_id: str
    gpu_type: str
    gpu_count: int
    vram_gb: int
    price_per_hour: Decimal
    price_per_gpu_hour: Decimal
    location: str
    reliability: Decimal | None
    cpu_cores: int | None
    ram_gb: int | None
    disk_gb: int | None
    cuda_version: str
    driver_version: str
    available: bool
    fetched_at: datetime
    max_disk_gb: int | None
    inet_down_mbps: int | None
    inet_up_mbps: int | None
    verified: bool | None
    datacenter: bool | None
    max_duration_hours: int | None
    # Its menu's rendered table rows (inventory/templatetags/offer_rows.py).
    html_cache: dict | None = field(default=None, repr=False, compare=False)


class Selection(Sequence):
    """The offers a query selected, in order: a paginator slices it; items are built per page.

    ``as_dicts`` gives API rows (the serializer's output), else ``OfferRow`` for templates.
    """

    def __init__(self, menu: Menu, positions: np.ndarray, *, as_dicts: bool) -> None:
        self.menu, self.positions, self.as_dicts = menu, positions, as_dicts

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index):
        if not isinstance(index, slice):
            return self[index : index + 1][0] if index >= 0 else self[len(self) + index]
        tuples = [self.menu.tuples[p] for p in self.positions[index].tolist()]
        if self.as_dicts:
            return offer_rows(tuples)
        return [OfferRow(*t, html_cache=self.menu.row_html) for t in tuples]


class Menu:
    """The visible-or-hidden available offers of one menu version, as columns."""

    def __init__(self, version: str, tuples: list[tuple], hidden: dict[int, datetime]) -> None:
        self.version = version
        self.tuples = tuples  # OFFER_FIELDS order; the rows of answers are built from these
        n = len(tuples)
        index = {name: OFFER_FIELDS.index(name) for name in (*NUMERIC, *TEXT)}
        self.columns: dict[str, np.ndarray] = {}
        for name, scale in NUMERIC.items():
            i = index[name]
            values = [NULL if t[i] is None else int(t[i] * scale) for t in tuples]
            self.columns[name] = np.array(values, dtype=np.int64).reshape(n)
        for name, (source, function) in DERIVED.items():
            i = OFFER_FIELDS.index(source)
            keys = {}  # per distinct value: a few hundred versions among all offers
            for t in tuples:
                if t[i] not in keys:
                    keys[t[i]] = function(t[i])
            values = [NULL if keys[t[i]] is None else keys[t[i]] for t in tuples]
            self.columns[name] = np.array(values, dtype=np.int64).reshape(n)
        self.names: dict[str, list[str]] = {}
        for name in TEXT:
            i = index[name]
            distinct = sorted({t[i] for t in tuples})
            code = {v: c for c, v in enumerate(distinct)}
            self.names[name] = distinct
            self.columns[name] = np.array([code[t[i]] for t in tuples], dtype=np.int32).reshape(n)
        # The page's GPU model picker: every model on the menu and its number of offers.
        counts = np.bincount(self.columns["gpu_type"], minlength=len(self.names["gpu_type"])).tolist()
        self.gpu_models: tuple[tuple[str, int], ...] = tuple(zip(self.names["gpu_type"], counts, strict=True))
        self.position = {int(pk): p for p, pk in enumerate(self.columns["id"].tolist())}
        self.orders = {sort: self._order(keys) for sort, keys in SORTS.items()}
        self._sorted: dict[str, dict[str, np.ndarray]] = {}
        self._matches: dict[tuple[str, str], frozenset[str]] = {}
        self.row_html: dict = {}  # the offers page's rendered rows, filled on demand
        self.set_hidden(hidden)

    def _order(self, keys: tuple[str, ...]) -> np.ndarray:
        """Positions sorted as the database sorts ``order_by(*keys)``."""
        null_high = connection.features.nulls_order_largest
        arrays = []
        for key in keys:
            name, descending = key.lstrip("-"), key.startswith("-")
            column = self.columns[name]
            if name in NULLS_LAST:  # NULL last both ways (filters.order_by_keys)
                values = -column if descending else column
                arrays.append(np.where(column == NULL, np.iinfo(np.int64).max, values))
                continue
            if name == "reliability":
                column = np.where(column == NULL, np.iinfo(np.int64).max if null_high else -1, column)
            arrays.append(-column if descending else column)
        return np.lexsort(arrays[::-1]).astype(np.int64)  # lexsort's primary key is the last

    def set_hidden(self, hidden: dict[int, datetime]) -> None:
        """Suppressed offers (``hidden_until``), compared with each request's ``now``."""
        column = np.zeros(len(self.tuples), dtype=np.int64)
        for pk, until in hidden.items():
            p = self.position.get(pk)
            if p is not None:
                column[p] = _epoch_us(until)
        # Replaced whole: readers in other threads see the old or the new, never half.
        self.sorted_hidden = {sort: column[order] for sort, order in self.orders.items()}
        self.hidden_until = column
        if dict(hidden) != getattr(self, "hidden", None):
            self.answers = {}  # rendered answers of the previous suppression state
            self.generation = getattr(self, "generation", 0) + 1
        self.hidden = dict(hidden)
        self.unhide_times = sorted({int(v) for v in column.tolist() if v})

    def answer(self, key: str, now: datetime) -> bytes | None:
        """A rendered answer for ``key`` still true at ``now`` (no suppression ended since)."""
        found = self.answers.get(key)
        return found[0] if found is not None and _epoch_us(now) < found[1] else None

    def remember(self, key: str, body: bytes, now: datetime, generation: int) -> None:
        """Keep ``body`` (computed at ``now`` under suppression state ``generation``) until the
        next suppression ends; a polling script repeats its query, and rendering the same page
        again costs far more than this lookup. An answer computed under a suppression state that
        changed meanwhile is not kept."""
        if generation != self.generation:
            return
        now_us = _epoch_us(now)
        valid_until = next((t for t in self.unhide_times if t > now_us), np.iinfo(np.int64).max)
        if len(self.answers) >= MAX_ANSWERS:
            self.answers = {}
        self.answers[key] = (body, valid_until)

    def matching(self, column: str, term: str, *, allow_db: bool) -> frozenset[str] | None:
        """The distinct values of ``column`` that ``icontains`` ``term``, as the database decides."""
        found = self._matches.get((column, term))
        if found is not None:
            return found
        names = self.names[column]
        if term.isascii() and all(n.isascii() for n in names):
            needle = term.lower()
            found = frozenset(n for n in names if needle in n.lower())
        elif allow_db:
            rows = Offer.objects.filter(available=True, **{f"{column}__icontains": term})
            found = frozenset(rows.values_list(column, flat=True).distinct())
        else:
            return None
        if len(self._matches) < 10_000:  # bounded: the terms are the clients'
            self._matches[(column, term)] = found
        return found

    def select(self, cleaned: dict, *, now: datetime, allow_db: bool) -> np.ndarray | None:
        """Positions of the offers ``OfferFilterSet`` would return for ``cleaned`` (its form's
        cleaned_data), in its order; None if that needs the database and ``allow_db`` is False.

        The comparisons run on the columns already permuted into the sort's order, so the
        selection is one boolean index of that order (no gather of a mask per request).
        """
        sort = cleaned.get("sort") or "price"
        columns = self.sorted_columns(sort)
        mask = None
        if self.hidden:  # visible(): not hidden_until > now
            mask = self.sorted_hidden[sort] <= _epoch_us(now)

        def narrow(condition: np.ndarray) -> None:
            nonlocal mask
            mask = condition if mask is None else mask & condition

        for name, (column, op) in RANGE_FILTERS.items():
            value = cleaned.get(name)
            if value is None:
                continue
            scaled = Decimal(value) * NUMERIC[column] / (100 if name in PERCENT_FILTERS else 1)
            values = columns[column]
            if op == "gte":
                narrow(values >= math.ceil(scaled))  # NULL is the smallest int64: never >=
            else:
                narrow((values <= math.floor(scaled)) & (values != NULL))
        for name, column in VERSION_FILTERS.items():
            if cleaned.get(name):
                narrow(columns[column] >= version_key(cleaned[name]))  # NULL: never >=
        for name, column in FLAG_FILTERS.items():
            if cleaned.get(name):
                narrow(columns[column] == (1 if cleaned[name] == "true" else 0))
        for name, column in TEXT_FILTERS.items():
            terms = cleaned.get(name)
            if not terms:
                continue
            found = frozenset()
            for term in [terms] if isinstance(terms, str) else terms:  # gpu: any of several
                matched = self.matching(column, term, allow_db=allow_db)
                if matched is None:
                    return None
                found |= matched
            wanted = np.array([n in found for n in self.names[column]], dtype=bool)
            narrow(wanted[columns[column]])  # a lookup per row: faster than np.isin
        if cleaned.get("provider"):
            names = self.names["provider"]
            code = names.index(cleaned["provider"]) if cleaned["provider"] in names else -1
            narrow(columns["provider"] == code)
        order = self.orders[sort]
        return order if mask is None else order[mask]

    def sorted_columns(self, sort: str) -> dict[str, np.ndarray]:
        """The filtered columns permuted into ``sort``'s order (built on first use, per menu)."""
        found = self._sorted.get(sort)
        if found is None:
            order = self.orders[sort]
            found = {name: self.columns[name][order] for name in FILTERED_COLUMNS}
            self._sorted[sort] = found
        return found


def build_menu(version: str) -> Menu:
    """Read every available offer once (one query) and build the columns."""
    started = time.perf_counter()
    rows = Offer.objects.filter(available=True).order_by().values_list(*OFFER_FIELDS)
    # Names, places and refresh times repeat across thousands of offers: one object each instead
    # of one per row (a third of the menu's memory at 100k offers).
    # Only those columns are visited per row (a third of the row's fields, the build's hot loop).
    shared = [(i, {}) for i, name in enumerate(OFFER_FIELDS) if name in SHARED_VALUES]
    tuples = []
    for r in rows.iterator(chunk_size=5000):
        row = list(r)
        for i, same in shared:
            row[i] = same.setdefault(row[i], row[i])
        tuples.append(tuple(row))
    menu = Menu(version, tuples, _hidden_now())
    # Millions of long-lived objects (the rows) would make every full cyclic collection scan
    # them again, a latency spike under load: collect once, then exclude what is alive now from
    # future collections (refcounting still frees an old menu when it is dropped).
    gc.collect()
    gc.freeze()
    log.info("menu %s built: %d offers in %.2f s", version, len(tuples), time.perf_counter() - started)
    return menu


def _hidden_now() -> dict[int, datetime]:
    hidden = Offer.objects.filter(available=True, hidden_until__isnull=False)
    return dict(hidden.values_list("id", "hidden_until"))


class MenuHolder:
    """This process's current menu; one thread at a time checks the version and rebuilds."""

    def __init__(self) -> None:
        self.menu: Menu | None = None
        self.checked_at = 0.0  # time.time() of the last version check
        self._lock = threading.Lock()

    def get(self, *, wait: bool) -> Menu | None:
        """The menu to answer from now. When a check is due, one caller does it: in a background
        thread if ``wait`` is False (the event loop), else in the calling thread. Every other
        caller meanwhile gets the previous menu; only with no menu yet does ``wait`` block."""
        menu = self.menu
        # Wall clock (time-machine moves it in tests); a clock stepped back makes a check due.
        if menu is not None and 0 <= time.time() - self.checked_at < CHECK_SECONDS:
            return menu
        if not wait:
            if self._lock.acquire(blocking=False):
                threading.Thread(target=self._check_then_release, name="menu-check", daemon=True).start()
            return menu
        if menu is not None:
            if self._lock.acquire(blocking=False):
                try:
                    self._check()
                finally:
                    self._lock.release()
            return self.menu
        with self._lock:  # the first build: wait for the one build under way
            if self.menu is None:
                self._check()
        return self.menu

    def _check_then_release(self) -> None:
        try:
            self._check()
        except Exception:
            log.exception("menu check failed; serving the previous menu")
        finally:
            close_old_connections()
            # A background thread's connection is otherwise held until the thread ends: hand it
            # back to the pool (or close it) now.
            connection.close()
            self._lock.release()

    def _check(self) -> None:
        version = menu_version()
        menu = self.menu
        if menu is None or menu.version != version:
            self.menu = build_menu(version)
        else:
            menu.set_hidden(_hidden_now())
        self.checked_at = time.time()

    def wait_idle(self) -> None:
        """Return once no check or rebuild is under way (tests, the bench)."""
        with self._lock:
            pass

    def reset(self) -> None:
        """Forget the menu (tests; a process that must rebuild from scratch)."""
        with self._lock:
            self.menu = None
            self.checked_at = 0.0


holder = MenuHolder()
