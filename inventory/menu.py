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

To add a column: add it to ``serializers.OFFER_FIELDS`` (rows) and, if it is filtered or sorted
on, to ``NUMERIC`` below (or to ``VERSION_COLUMNS`` if it is a version compared as numbers, like
the CUDA and driver versions). Figures derived from a row (the value figures,
``specs.value_figures``) are computed for every row here, vectorised at build time
(``Menu._derived_columns``); their sort and filter columns are in ``DERIVED``.

Confidence (issue 15, ``inventory/confidence.py``) is computed for every offer here, once per
menu build from one read of the recent provisioning outcomes (``serializers.CONFIDENCE_FIELDS``
follow the database columns in each tuple); the ``best_bet`` sort key is derived from it and the
price (``COMPUTED``). It is as fresh as the menu: a new outcome shows at the next rebuild (the
next refresh), while the hiding it causes shows within ``CHECK_SECONDS`` (``hidden_until``).
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

from inventory.confidence import best_bet_price
from inventory.filters import NULLS_LAST, SORTS, VALUE_SORT_KEY
from inventory.measured import measured_index, with_measured
from inventory.models import Offer
from inventory.serializers import MENU_FIELDS, OFFER_FIELDS, offer_rows, with_confidence
from inventory.services import menu_version
from inventory.specs import MICRO_SCALES, VALUE_FIELDS, SpecFigures, micro_dollars, spec_table, version_key

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
    "confidence": 1000,  # Decimal with 3 places (inventory/confidence.py)
    "best_bet": 10_000,
    "max_disk_gb": 1,
    "inet_down_mbps": 1,
    "inet_up_mbps": 1,
    "verified": 1,
    "datacenter": 1,
    "max_duration_hours": 1,
}
# NUMERIC columns computed from others rather than read from the tuples: name -> function of a tuple.
_PRICE, _CONFIDENCE = MENU_FIELDS.index("price_per_hour"), MENU_FIELDS.index("confidence")
COMPUTED = {"best_bet": lambda t: best_bet_price(t[_PRICE], t[_CONFIDENCE])}
# Versions compared as numbers, computed at build time from a text column: name -> source column.
VERSION_COLUMNS = {"cuda_key": "cuda_version", "driver_key": "driver_version"}
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
    "min_confidence": ("confidence", "gte"),
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
# Columns computed from a row rather than read from it (Menu._derived_columns): "value" ($ per
# TFLOP-hour as the database computes it, NaN without a spec row) sorts.
DERIVED = (VALUE_SORT_KEY,)
# Columns whose values repeat across offers (kept once in memory, see build_menu).
SHARED_VALUES = {
    "provider",
    "gpu_type",
    "location",
    "cuda_version",
    "driver_version",
    "fetched_at",
    "reliability",
    "confidence",
    "confidence_label",
    "confidence_basis",
    "confidence_successes",
    "confidence_failures",
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
    confidence: Decimal
    confidence_label: str
    confidence_basis: str
    confidence_successes: Decimal
    confidence_failures: Decimal
    usd_per_tflop_hour: Decimal | None
    usd_per_vram_gb_hour: Decimal | None
    usd_per_tbps_hour: Decimal | None
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
        tuples = [self.menu.tuples[p] + self.menu.value_strings(p) for p in self.positions[index].tolist()]
        if self.as_dicts:
            return with_measured(offer_rows(tuples), self.menu.measured)
        return [OfferRow(*t, html_cache=self.menu.row_html) for t in tuples]


class Menu:
    """The visible-or-hidden available offers of one menu version, as columns."""

    def __init__(
        self,
        version: str,
        tuples: list[tuple],
        hidden: dict[int, datetime],
        specs: dict[str, SpecFigures] | None = None,
    ) -> None:
        self.version = version
        # MENU_FIELDS order; + value_strings: the rows of answers (ROW_FIELDS)
        self.tuples = tuples
        self.specs = specs or {}
        n = len(tuples)
        index = {name: MENU_FIELDS.index(name) for name in (*NUMERIC, *TEXT) if name not in COMPUTED}
        self.columns: dict[str, np.ndarray] = {}
        for name, scale in NUMERIC.items():
            if name in COMPUTED:
                values = [int(COMPUTED[name](t) * scale) for t in tuples]
            else:
                i = index[name]
                values = [NULL if t[i] is None else int(t[i] * scale) for t in tuples]
            self.columns[name] = np.array(values, dtype=np.int64).reshape(n)
        for name, source in VERSION_COLUMNS.items():
            i = OFFER_FIELDS.index(source)
            keys = {}  # per distinct value: a few hundred versions among all offers
            for t in tuples:
                if t[i] not in keys:
                    keys[t[i]] = version_key(t[i])
            values = [NULL if keys[t[i]] is None else keys[t[i]] for t in tuples]
            self.columns[name] = np.array(values, dtype=np.int64).reshape(n)
        self.names: dict[str, list[str]] = {}
        for name in TEXT:
            i = index[name]
            distinct = sorted({t[i] for t in tuples})
            code = {v: c for c, v in enumerate(distinct)}
            self.names[name] = distinct
            self.columns[name] = np.array([code[t[i]] for t in tuples], dtype=np.int32).reshape(n)
        self.columns.update(self._derived_columns())
        self._value_strings: dict[int, tuple] = {}
        # The page's GPU model picker: every model on the menu and its number of offers.
        counts = np.bincount(self.columns["gpu_type"], minlength=len(self.names["gpu_type"])).tolist()
        self.gpu_models: tuple[tuple[str, int], ...] = tuple(zip(self.names["gpu_type"], counts, strict=True))
        self.position = {int(pk): p for p, pk in enumerate(self.columns["id"].tolist())}
        self.orders = {sort: self._order(keys) for sort, keys in SORTS.items()}
        self._sorted: dict[str, dict[str, np.ndarray]] = {}
        self._matches: dict[tuple[str, str], frozenset[str]] = {}
        self.row_html: dict = {}  # the offers page's rendered rows, filled on demand
        self.measured: dict = {}  # inventory.measured.measured_index(), set by build_menu
        self.set_hidden(hidden)

    def _derived_columns(self) -> dict[str, np.ndarray]:
        """The ``DERIVED`` columns, vectorised over the distinct names (a few dozen GPU models),
        so a build at 100k offers pays microseconds, not a Python loop per row."""
        # price_per_hour / (gpu_count * tflops) in float64, the same IEEE operations as the
        # database's value_expression (filters.py), so both order alike.
        tflops = [self.specs[n].tflops_float if n in self.specs else math.nan for n in self.names["gpu_type"]]
        per_gpu = np.array(tflops, dtype=np.float64)[self.columns["gpu_type"]] if len(tflops) else np.zeros(0)
        count = self.columns["gpu_count"].astype(np.float64)
        price = self.columns["price_per_hour"] / float(NUMERIC["price_per_hour"])
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.where(count >= 1, price / (count * per_gpu), math.nan)
        columns = {VALUE_SORT_KEY: value}
        # The value figures in millionths of a dollar, exactly as specs.value_figures rounds them.
        names = self.names["gpu_type"]
        divisors = np.array(
            [self.specs[n].divisors() if n in self.specs else (0, 0, 0) for n in names] or [(0, 0, 0)],
            dtype=np.int64,
        )[self.columns["gpu_type"]]
        counts = self.columns["gpu_count"]
        for i, (name, scale) in enumerate(zip(VALUE_FIELDS, MICRO_SCALES, strict=True)):
            denominator = counts * divisors[:, i]
            safe = np.where(denominator > 0, denominator, 1)
            micro = micro_dollars(self.columns["price_per_hour"] * scale, safe)
            columns[name] = np.where(denominator > 0, micro, NULL)
        return columns

    def value_strings(self, position: int) -> tuple[str | None, str | None, str | None]:
        """The value figures of the offer at ``position`` as the API writes them ("0.002119", or
        None without a spec row), formatted once per menu and offer."""
        found = self._value_strings.get(position)
        if found is None:
            found = tuple(_micro_string(int(self.columns[name][position])) for name in VALUE_FIELDS)
            self._value_strings[position] = found
        return found

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
            if name == VALUE_SORT_KEY:  # NULLS LAST both ways, as filters.sort_by asks
                column = -column if descending else column
                arrays.append(np.where(np.isnan(column), np.inf, column))
                continue
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


def _micro_string(micro: int) -> str | None:
    return None if micro == NULL else f"{micro // 1_000_000}.{micro % 1_000_000:06d}"


def build_menu(version: str) -> Menu:
    """Read every available offer once (one query) and build the columns."""
    started = time.perf_counter()
    rows = Offer.objects.filter(available=True).order_by().values_list(*OFFER_FIELDS, "host")
    # Names, places and refresh times repeat across thousands of offers: one object each instead
    # of one per row (a third of the menu's memory at 100k offers).
    # Only those columns are visited per row (a third of the row's fields, the build's hot loop).
    shared = [(i, {}) for i, name in enumerate(MENU_FIELDS) if name in SHARED_VALUES]
    tuples = []
    for r in with_confidence(rows.iterator(chunk_size=5000)):
        row = list(r)
        for i, same in shared:
            row[i] = same.setdefault(row[i], row[i])
        tuples.append(tuple(row))
    menu = Menu(version, tuples, _hidden_now(), spec_table())
    menu.measured = measured_index()  # benchmarks of the machines (issue 18), once per version
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
