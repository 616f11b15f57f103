"""What the user pays: the one formula (issue 13).

Every figure of money a person sees or is reserved against comes from here: the charged price
per hour (the rental's, the API's, the rent page's), the estimate on the rent page, the budget
reservation of a rental and of an extension, the ledger's amounts and the live cost so far. The
CLI shows the API's figures, so it follows too.

- :func:`offer_price_at`: the provider's hourly price of the machine at the disk asked for.
- :func:`price_per_hour`: that price plus the chargeback markup (SHOPPER_PRICE_MARKUP_PERCENT,
  fixed on the rental at rent time), at 4 decimal places.
- :func:`charge`: a charged price × a number of hours, to the cent; :func:`estimate` is
  ``charge(price_per_hour(base), hours)``: the estimate the rent page shows *is* the amount the
  budget reserves.
- :func:`charge_seconds`: a price × billed seconds, rounded once (the ledger at 6 places so its
  entries telescope, the live cost to the cent).

This module imports no app (only Django settings): ``sessions.models`` imports it for
``Rental.charged_price_per_hour``, while ``costs.services`` imports sessions.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings

CENT = Decimal("0.01")
MICRO = Decimal("0.000001")
PRICE_PLACES = Decimal("0.0001")  # prices per hour are stored with 4 decimal places
SECONDS_PER_HOUR = Decimal(3600)


def cents(value: Decimal) -> Decimal:
    """Round to the cent, half up: only when a figure is shown, reserved or compared with a limit."""
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)


def offer_price_at(offer: Any, disk_gb: int | None, *, base: Decimal | None = None) -> Decimal:
    """The provider's hourly price of the machine that will be created from ``offer`` with
    ``disk_gb`` of disk: the menu price (``base``, default the offer's, includes
    ``disk_gb_default`` GB) plus storage for every GB more (less) at the offer's storage rate."""
    price = Decimal(offer.price_per_hour if base is None else base)
    rate, default = offer.storage_price_per_gb_hour, offer.disk_gb_default
    if disk_gb is None or rate is None or default is None or disk_gb == default:
        return price
    return (price + Decimal(rate) * (disk_gb - default)).quantize(PRICE_PLACES, rounding=ROUND_HALF_UP)


def price_per_hour(base: Decimal, markup_percent: Decimal | None = None) -> Decimal:
    """What the user is charged per hour for a provider price ``base``: plus the markup
    (``markup_percent``; None: the team's current SHOPPER_PRICE_MARKUP_PERCENT), at 4 places.

    Half-even, the rounding Decimal applied before this function existed: the charged price of
    rentals already running (and their ledger) must not move by a hundredth of a cent."""
    markup = settings.SHOPPER_PRICE_MARKUP_PERCENT if markup_percent is None else markup_percent
    charged = Decimal(base) * (1 + Decimal(markup) / 100)
    return charged.quantize(PRICE_PLACES, rounding=ROUND_HALF_EVEN)


def charge(price: Decimal, hours: Decimal) -> Decimal:
    """What ``hours`` at the charged ``price`` per hour cost, to the cent (half up).

    The rent page's estimate, the budget reservation of a rental and of an extension: one
    figure, so the amount shown is exactly the amount reserved."""
    return cents(Decimal(price) * Decimal(hours))


def estimate(base: Decimal, hours: Decimal, markup_percent: Decimal | None = None) -> Decimal:
    """What ``hours`` of a machine at provider price ``base`` cost the user, to the cent: the rent
    page's estimate and the budget reservation of a rental or an extension (one call, one figure)."""
    return charge(price_per_hour(base, markup_percent), hours)


def charge_seconds(price: Decimal, seconds: Decimal | int, *, to: Decimal = MICRO) -> Decimal:
    """``price`` per hour × ``seconds``, rounded once to ``to`` (half up).

    Multiplied before divided, so a whole number of seconds gives the exact product before the
    one rounding (``price × (seconds / 3600)`` would round 1/3600 first)."""
    return (Decimal(price) * Decimal(seconds) / SECONDS_PER_HOUR).quantize(to, rounding=ROUND_HALF_UP)
