"""The one rule for how long a user may reserve or extend a machine, in hours.

Used by every place a person types hours: the rent form (page), ``POST /api/v1/sessions``
(serializer), the extension (``sessions.lifecycle.rental_extend``, behind the page, the API and
the admin action). The page's ``<input min step>`` attributes come from the same constants.

- At least ``MIN_HOURS`` (15 minutes): a shorter reservation pays for a create and a destroy
  at the provider for a machine that is shut down before anyone could log in (and the safety
  loop only looks every few seconds).
- A multiple of ``STEP_HOURS`` (15 minutes), as the page's hour field steps.

``rental_create`` itself still only asks for more than 0 hours: the chaos run
(``tools/chaos.py``) rents for a minute or two through the service to exercise deadlines.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError

MIN_HOURS = Decimal("0.25")
STEP_HOURS = Decimal("0.25")
# An extension adds at most a week at once (the hard maximum still applies on top).
MAX_EXTENSION_HOURS = Decimal(168)


def hours_check(value, *, maximum, what: str = "reservation", maximum_name: str = "") -> Decimal:
    """``value`` as a Decimal number of hours, or ValidationError with a message for a person.

    ``maximum`` is inclusive (``maximum_name`` says what it is, e.g. "the hard maximum");
    ``what`` names the thing in messages ("reservation", "extension").
    """
    try:
        hours = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValidationError(f"Give the {what} in hours, e.g. 2 or 1.5.") from None
    maximum = Decimal(maximum)
    if not hours.is_finite() or hours <= 0:
        raise ValidationError(f"The {what} must be more than 0 hours.")
    if hours < MIN_HOURS:
        raise ValidationError(f"The {what} must be at least {MIN_HOURS} hours (15 minutes).")
    if hours > maximum:
        note = f" ({maximum_name})" if maximum_name else ""
        raise ValidationError(f"The {what} can be at most {maximum.normalize():f} hours{note}.")
    if hours % STEP_HOURS:
        raise ValidationError(
            f"Give the {what} in steps of {STEP_HOURS} hours (15 minutes), e.g. 1.25 or 2.5."
        )
    return hours
