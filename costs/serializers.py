"""Shapes of ``GET /api/v1/costs``: its query parameters and its answer (money as "12.34")."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from django.utils.dateparse import parse_date, parse_datetime
from rest_framework import serializers

from costs.services import date_out_of_range

PERIODS = ("day", "month")


class DateOrDateTimeField(serializers.Field):
    """An ISO date (``2025-03-01``) or date-time (``2025-03-01T12:00:00Z``; naive means UTC).

    Internal value: ``(aware datetime, whether a bare date was given)``. Dates outside
    ``costs.services.EARLIEST_DATE``..``LATEST_DATE`` are refused (they overflowed: a 500).
    """

    default_error_messages = {"invalid": "Give an ISO date such as 2025-03-01 (or an ISO date-time)."}

    def to_internal_value(self, data):
        text = str(data).strip()
        try:
            day = parse_date(text)
            moment = None if day else parse_datetime(text)
        except ValueError:
            day = moment = None
        if day is None and moment is None:
            self.fail("invalid")
        # Checked on the date as written, before any arithmetic: converting 0001-01-01T00:00+05:00
        # to UTC is what overflowed.
        problem = date_out_of_range(day or moment.date())
        if problem:
            raise serializers.ValidationError(problem, code="invalid")
        if day is not None:
            return datetime.combine(day, time.min, tzinfo=UTC), True
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC), False

    def to_representation(self, value):
        return value.isoformat() if isinstance(value, date | datetime) else value


CostsQuerySerializer = type(
    "CostsQuerySerializer",
    (serializers.Serializer,),
    {
        "__doc__": "Query parameters of GET /api/v1/costs (``from`` is a Python keyword).",
        "period": serializers.ChoiceField(
            choices=PERIODS,
            required=False,
            default="month",
            help_text="Grouping of the time series: day or month (default month).",
        ),
        "from": DateOrDateTimeField(
            required=False, help_text="Start (ISO date or date-time; default: start of this UTC month)."
        ),
        "to": DateOrDateTimeField(
            required=False,
            help_text="End: a date is inclusive (the whole day), a date-time exclusive (default: now).",
        ),
        "consumer": serializers.CharField(
            required=False, help_text="Staff only: one person's spend (username)."
        ),
    },
)


class MoneyField(serializers.DecimalField):
    def __init__(self, **kwargs):
        super().__init__(max_digits=14, decimal_places=2, **kwargs)


class SeriesRowSerializer(serializers.Serializer):
    period = serializers.CharField(help_text="2025-03-01 (period=day) or 2025-03 (period=month)")
    amount = MoneyField()
    provider_cost = MoneyField()
    hours = MoneyField()


class BreakdownRowSerializer(serializers.Serializer):
    key = serializers.CharField()
    amount = MoneyField()
    provider_cost = MoneyField()
    hours = MoneyField()


class BudgetScopeSerializer(serializers.Serializer):
    limit = MoneyField()
    spent = MoneyField(help_text="Charged spend this UTC month")
    reserved = MoneyField(help_text="Estimated remaining cost of live sessions")
    remaining = MoneyField()
    percent = serializers.DecimalField(max_digits=8, decimal_places=1, help_text="spent / limit × 100")


class BudgetStatusSerializer(serializers.Serializer):
    user = BudgetScopeSerializer(allow_null=True)
    team = BudgetScopeSerializer(allow_null=True)


class CostsSerializer(serializers.Serializer):
    consumer = serializers.CharField(allow_null=True, help_text="Whose spend; null: the whole team")
    period = serializers.ChoiceField(choices=PERIODS)
    currency = serializers.CharField()
    total = MoneyField(help_text="Charged (with the chargeback markup)")
    provider_cost = MoneyField(help_text="What the providers charge")
    hours = MoneyField()
    series = SeriesRowSerializer(many=True)
    by_gpu_type = BreakdownRowSerializer(many=True)
    by_provider = BreakdownRowSerializer(many=True)
    by_consumer = BreakdownRowSerializer(many=True, required=False, help_text="Staff, team view only")
    budget = BudgetStatusSerializer()

    def get_fields(self):
        fields = super().get_fields()
        # "from" and "to" are keywords/builtins: added by name.
        fields["from"] = serializers.DateTimeField()
        fields["to"] = serializers.DateTimeField()
        return fields
