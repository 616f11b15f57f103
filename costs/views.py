"""The costs page: spend for a period (totals, charts, rentals), budget use, and a CSV export.

Charts are inline SVG built here from the numbers (no JavaScript, no chart library): the view
computes the geometry, ``costs/spend.html`` draws it. Money stays Decimal; floats are used only
for pixel coordinates.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlencode

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from common.htmx import HtmxHttpRequest, is_fragment
from costs import services
from sessions.models import Rental
from shopper.templatetags.shopper_format import hm

CENT = Decimal("0.01")
ZERO = Decimal("0")
# Above this many days the time chart shows months instead of days.
MAX_DAILY_BARS = 92
# The rentals table shows at most this many rows; the CSV always has all of them.
TABLE_LIMIT = 200
NOT_YOURS = "You can only see your own spend."


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------
PERIODS = [
    ("this_month", "This month"),
    ("last_month", "Last month"),
    ("7d", "Last 7 days"),
    ("custom", "Custom dates"),
]
BAD_DATE = "Enter a date as YYYY-MM-DD."


class SpendFilterForm(forms.Form):
    period = forms.ChoiceField(choices=PERIODS, required=False)
    to = forms.DateField(required=False, label="To", error_messages={"invalid": BAD_DATE})
    consumer = forms.CharField(required=False, max_length=150, label="Person")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # "from" is a Python keyword, so the field is added by name.
        self.fields["from"] = forms.DateField(
            required=False, label="From", error_messages={"invalid": BAD_DATE}
        )
        self.order_fields(["period", "from", "to", "consumer"])

    def clean(self):
        data = super().clean()
        start, end = data.get("from"), data.get("to")
        if "from" in self.errors or "to" in self.errors:
            return data
        for name, day in (("from", start), ("to", end)):
            problem = day and services.date_out_of_range(day)
            if problem:
                self.add_error(name, problem)
        if self.errors:
            return data
        period = data.get("period") or ("custom" if start or end else "this_month")
        data["period"] = period
        if period == "custom":
            if not start:
                self.add_error("from", "Pick a start date for a custom period.")
            elif end and start > end:
                self.add_error(
                    "to", f"The end date {end:%Y-%m-%d} is before the start date {start:%Y-%m-%d}."
                )
            elif ((end or max(timezone.localdate(), start)) - start).days >= services.MAX_RANGE_DAYS:
                self.add_error(
                    "from",
                    f"A custom period can be at most {services.MAX_RANGE_DAYS // 366} years; "
                    "pick a later start date.",
                )
        return data


@dataclass(frozen=True)
class Period:
    first_day: date
    last_day: date  # inclusive
    label: str

    @property
    def start(self) -> datetime:
        return timezone.make_aware(datetime.combine(self.first_day, time.min))

    @property
    def end(self) -> datetime:
        """Exclusive: midnight after the last day."""
        return timezone.make_aware(datetime.combine(self.last_day + timedelta(days=1), time.min))

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1


def _period(data: dict, today: date) -> Period:
    kind = data.get("period") or "this_month"
    first_of_month = today.replace(day=1)
    if kind == "last_month":
        last = first_of_month - timedelta(days=1)
        return Period(last.replace(day=1), last, f"{last:%B %Y}")
    if kind == "7d":
        first = today - timedelta(days=6)
        return Period(first, today, f"Last 7 days ({_short(first)} – {_short(today)})")
    if kind == "custom":
        first, last = data["from"], data.get("to") or max(today, data["from"])
        return Period(first, last, f"{_short(first, year=True)} – {_short(last, year=True)}")
    next_month = (first_of_month + timedelta(days=32)).replace(day=1)
    return Period(first_of_month, next_month - timedelta(days=1), f"{today:%B %Y}")


def _short(d: date, year: bool = False) -> str:
    return f"{d:%b} {d.day}" + (f", {d.year}" if year else "")


@dataclass
class Scope:
    """What the request asks for once checked: the period, whose spend (None: the whole team)."""

    form: SpendFilterForm
    period: Period | None = None
    target: object | None = None
    error: str = ""
    forbidden: bool = False

    @property
    def ok(self) -> bool:
        return self.period is not None and not self.error

    @property
    def query(self) -> str:
        """The filters as a query string (for the export link)."""
        if not self.form.is_valid():
            return ""
        params = {k: self.form.data.get(k, "") for k in ("period", "from", "to", "consumer")}
        return urlencode({k: v for k, v in params.items() if v})


def _scope(request: HttpRequest) -> Scope:
    form = SpendFilterForm(request.GET)
    scope = Scope(form=form)
    user = request.user
    wanted = request.GET.get("consumer", "").strip()
    if not user.is_staff:
        if wanted and wanted != user.get_username():
            scope.error, scope.forbidden = NOT_YOURS, True
            return scope
        scope.target = user
    if not form.is_valid():
        scope.error = " ".join(
            f"{form.fields[f].label or f.title()}: {' '.join(errs)}" if f != "__all__" else " ".join(errs)
            for f, errs in form.errors.items()
        )
        return scope
    if user.is_staff and wanted:
        try:
            scope.target = get_user_model().objects.get(**{get_user_model().USERNAME_FIELD: wanted})
        except get_user_model().DoesNotExist:
            scope.error = f"There is no user named “{wanted[:40]}”. Pick someone from the list."
            return scope
    scope.period = _period(form.cleaned_data, timezone.localdate())
    return scope


# --------------------------------------------------------------------------------------------
# Numbers and charts
# --------------------------------------------------------------------------------------------
def money(value: Decimal) -> Decimal:
    return (value or ZERO).quantize(CENT, rounding=ROUND_HALF_UP)


def _axis(value: float, ticks: int = 4) -> tuple[float, float]:
    """(axis maximum, tick step): a step of 1, 2 or 5 × 10^k giving at most ``ticks`` steps."""
    if value <= 0:
        return 1.0, 0.25
    raw = value / ticks
    exp = math.floor(math.log10(raw))
    step = next(m * 10**exp for m in (1, 2, 5, 10) if m * 10**exp >= raw - 1e-12)
    return step * math.ceil(value / step - 1e-9), step


def _fmt_axis(value: float) -> str:
    if value >= 1000:
        return f"${value / 1000:g}k"
    return f"${value:g}" if value >= 1 or value == 0 else f"${value:.2f}"


def _column_chart(points: list[tuple[str, str, Decimal, Decimal]]) -> dict:
    """Vertical bars. ``points``: (tick label or "", hover label, amount, billed time as text)."""
    width, height = 1160, 280
    left, right, top, bottom = 76, 12, 12, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value, step = _axis(float(max((p[2] for p in points), default=ZERO)))
    slot = plot_w / max(len(points), 1)
    bar_w = max(slot * 0.72, 1.0)
    bars = []
    for i, (tick, label, amount, hours) in enumerate(points):
        h = float(amount) / top_value * plot_h
        if amount > 0:
            h = max(h, 1.0)
        x = left + i * slot + (slot - bar_w) / 2
        bars.append({
            "x": round(x, 1), "y": round(top + plot_h - h, 1), "w": round(bar_w, 1), "h": round(h, 1),
            "tick": tick, "tick_x": round(left + i * slot + slot / 2, 1),
            "slot_x": round(left + i * slot, 1), "slot_w": round(slot, 1), "plot_h": plot_h,
            "label": label, "amount": money(amount), "hours": hours,
        })  # fmt: skip
    grid = [
        {"y": round(top + plot_h - plot_h * i * step / top_value, 1), "label": _fmt_axis(i * step)}
        for i in range(round(top_value / step) + 1)
    ]
    return {
        "width": width, "height": height, "left": left, "right": width - right, "top": top,
        "base": top + plot_h, "mid_x": left + plot_w / 2, "mid_y": top + plot_h / 2,
        "bars": bars, "grid": grid, "tick_y": top + plot_h + 16, "xlabel_y": height - 6,
    }  # fmt: skip


def _bar_chart(rows: list[tuple[str, Decimal, Decimal]]) -> dict:
    """Horizontal bars, biggest first. ``rows``: (label, amount, billed time as text)."""
    width, label_w, value_w, row_h, top, bottom = 560, 160, 76, 30, 8, 34
    plot_w = width - label_w - value_w
    top_value = float(max((r[1] for r in rows), default=ZERO)) or 1.0
    bars = []
    for i, (label, amount, hours) in enumerate(rows):
        w = float(amount) / top_value * plot_w
        if amount > 0:
            w = max(w, 1.0)
        y = top + i * row_h
        bars.append({
            "label": label, "short": label if len(label) <= 20 else label[:19] + "…",
            "y": y + 5, "h": row_h - 10, "w": round(w, 1), "text_y": y + row_h / 2 + 5,
            "value_x": round(label_w + w + 6, 1), "amount": money(amount), "hours": hours,
        })  # fmt: skip
    height = top + len(rows) * row_h + bottom
    return {
        "width": width, "height": height, "x0": label_w, "label_x": label_w - 8, "bars": bars,
        "base": top + len(rows) * row_h, "mid_x": label_w + plot_w / 2, "xlabel_y": height - 8,
    }  # fmt: skip


def _time_chart(period: Period, rows: list[dict], monthly: bool) -> dict:
    """One bar per day (or month) of the period up to today, zero where nothing was spent."""
    by_key = {str(r["key"]): r for r in rows}
    last = min(period.last_day, max(timezone.localdate(), period.first_day))
    days = []
    day = period.first_day.replace(day=1) if monthly else period.first_day
    while day <= last:
        days.append(day)
        day = (day + timedelta(days=32)).replace(day=1) if monthly else day + timedelta(days=1)
    every = math.ceil(len(days) / (12 if monthly else 16))
    points = []
    for i, day in enumerate(days):
        row = by_key.get(f"{day:%Y-%m}" if monthly else f"{day:%Y-%m-%d}", {})
        if monthly:
            tick = f"{day:%b %Y}" if (i == 0 or day.month == 1) else f"{day:%b}"
            label = f"{day:%B %Y}"
        else:
            tick = f"{day:%b} {day.day}" if (i == 0 or day.day == 1) else str(day.day)
            label = f"{day:%a %Y-%m-%d}"
        points.append(
            (tick if i % every == 0 else "", label, row.get("amount") or ZERO, hm(row.get("seconds") or 0))
        )
    return _column_chart(points)


def budget_meter(status: dict | None) -> dict | None:
    """The context of costs/budget_meter.html for one scope of ``budget_status`` (None: no budget);
    the costs page and the dashboard both draw their bars with it."""
    if not status:
        return None
    limit, spent = status.get("limit") or ZERO, status.get("spent") or ZERO
    reserved = status.get("reserved") or ZERO
    percent = status.get("percent")
    if percent is None:
        percent = (spent + reserved) / limit * 100 if limit else Decimal(100)
    spent_w = min(float(spent / limit * 100), 100.0) if limit else 100.0
    reserved_w = min(float(reserved / limit * 100), 100.0 - spent_w) if limit else 0.0
    level = "over" if percent >= 100 else "warn" if percent >= 80 else "ok"
    return {
        "limit": money(limit), "spent": money(spent), "reserved": money(reserved),
        "remaining": money(status.get("remaining", limit - spent - reserved)),
        "percent": Decimal(percent).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP),
        "spent_w": f"{spent_w:.2f}", "reserved_w": f"{reserved_w:.2f}", "level": level,
    }  # fmt: skip


def _rental_rows(summary: list[dict]) -> list[dict]:
    """The group_by="rental" rows joined to their rentals (one query), newest rental first."""
    found = Rental.objects.select_related("consumer").in_bulk([r["key"] for r in summary])
    rentals = {str(pk): rental for pk, rental in found.items()}  # the keys are str, in_bulk's UUIDs
    rows = [{**r, "rental": rentals.get(str(r["key"]))} for r in summary]
    epoch = timezone.make_aware(datetime(1970, 1, 1))
    rows.sort(key=lambda row: row["rental"].created_at if row["rental"] else epoch, reverse=True)
    return rows


def _summary(request: HttpRequest, scope: Scope) -> dict:
    period, target, staff = scope.period, scope.target, request.user.is_staff
    args = {"start": period.start, "end": period.end, "user": target}
    rental_rows = _rental_rows(services.spend_summary(**args, group_by="rental"))
    # Totals from the per-month rows: each month is rounded once, so the total of "this month"
    # is exactly the budget's "spent" (a sum of per-rental rows can drift by a cent per rental).
    months = services.spend_summary(**args, group_by="month")
    amount = sum((r["amount"] for r in months), ZERO)
    provider_cost = sum((r["provider_cost"] for r in months), ZERO)
    seconds = sum((r["seconds"] for r in months), 0)
    monthly = period.days > MAX_DAILY_BARS
    context = {
        "rows": rental_rows[:TABLE_LIMIT],
        "row_count": len(rental_rows),
        "total": money(amount),
        "provider_total": money(provider_cost),
        "margin": money(amount - provider_cost),
        "billed_seconds": seconds,  # shown as hours and minutes
        "show_provider_cost": staff and provider_cost != amount,
        "monthly": monthly,
    }
    if rental_rows:
        by_time = months if monthly else services.spend_summary(**args, group_by="day")
        context["time_chart"] = _time_chart(period, by_time, monthly)
        groups = ["gpu_type", "provider"] + (["consumer"] if staff and target is None else [])
        for group in groups:
            rows = services.spend_summary(**args, group_by=group)
            context[f"{group}_chart"] = _bar_chart(
                sorted(((str(r["key"]), r["amount"], hm(r["seconds"])) for r in rows), key=lambda t: -t[1])
            )
    return context


# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------
@require_GET
@login_required
def spend(request: HtmxHttpRequest) -> HttpResponse:
    scope = _scope(request)
    user = request.user
    people = get_user_model().objects.filter(is_active=True).order_by("username")
    context = {
        "scope": scope,
        "form": scope.form,
        "periods": PERIODS,
        "is_staff": user.is_staff,
        "people": list(people.values_list("username", flat=True)) if user.is_staff else [],
    }
    if scope.ok:
        budget_user = scope.target or user
        status = services.budget_status(user=budget_user)
        name = "Your" if budget_user == user else f"{budget_user.get_username()}’s"
        context.update(_summary(request, scope))
        context.update(
            period=scope.period,
            budget_title=f"{name} budget",
            personal_budget=budget_meter(status.get("user")),
            team_budget=budget_meter(status.get("team")),
        )
    template = "costs/spend.html"
    if is_fragment(request):
        template += "#spend-summary"
    return render(request, template, context, status=403 if scope.forbidden else 200)


@require_GET
@login_required
def spend_export(request: HttpRequest) -> HttpResponse:
    """One CSV row per rental in the period; non-staff only ever get their own rows."""
    scope = _scope(request)
    if scope.forbidden:
        return HttpResponseForbidden(NOT_YOURS + "\n", content_type="text/plain; charset=utf-8")
    if not scope.ok:
        return HttpResponse(scope.error + "\n", status=400, content_type="text/plain; charset=utf-8")
    period, staff = scope.period, request.user.is_staff
    summary = services.spend_summary(start=period.start, end=period.end, user=scope.target, group_by="rental")
    rows = _rental_rows(summary)
    who = scope.target.get_username() if scope.target else "team"
    filename = f"costs-{who}-{period.first_day:%Y%m%d}-{period.last_day:%Y%m%d}.csv"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    writer = csv.writer(response)
    header = ["rental_id", "user", "gpu", "provider", "hours", "amount"]
    writer.writerow([*header, "provider_cost"] if staff else header)
    for row in rows:
        rental = row["rental"]
        line = [
            row["key"],
            rental.consumer.get_username() if rental else "",
            f"{rental.gpu_count}x {rental.gpu_type}" if rental else "",
            rental.provider if rental else "",
            row["hours"],
            row["amount"],
        ]
        writer.writerow([*line, row["provider_cost"]] if staff else line)
    return response
