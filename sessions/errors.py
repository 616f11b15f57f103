"""The refusals of renting and running a session (API.md codes). All derive from
:class:`common.errors.DomainError`, so the API and the pages map them in one place each."""

from __future__ import annotations

from common.errors import DomainError


class RentalError(DomainError):
    """A refusal about a rental (400 ``invalid`` unless a subclass says otherwise)."""

    code = "invalid"
    status = 400


class OfferNotFound(RentalError):
    code, status = "not_found", 404


class OfferGone(RentalError):
    code, status = "offer_unavailable", 409


class PriceChanged(RentalError):
    code, status = "price_changed", 409


class CapacityReached(RentalError):
    code, status = "capacity_reached", 409


class AlreadyEnded(RentalError):
    code, status = "already_ended", 409


class HardMaxExceeded(RentalError):
    code, status = "hard_max_exceeded", 403


class InsufficientBalance(RentalError):
    """The provider account's balance does not cover the reservation (sessions/balances.py)."""

    code, status = "insufficient_balance", 409


class KeyReused(RentalError):
    """The Idempotency-Key was used before for a different request: answering with that other
    rental would hide the mistake, renting again would break the key's promise (IETF
    idempotency-key draft: 422). sessions/idempotency.py"""

    code, status = "idempotency_key_reused", 422
