"""Renting at most once per request key, in the database (API.md: ``Idempotency-Key``).

The rent page's one-time form token and the API's ``Idempotency-Key`` header are stored on the
rental as ``request_key``, unique per consumer. Two submits of one request, in one web process or
in several, cannot both insert: the second blocks on the unique index until the first commits and
then finds the first one's rental. Nothing is stored for a request that failed (price changed,
capacity, budget...), so repeating it tries again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.db import IntegrityError

from sessions import services
from sessions.errors import KeyReused
from sessions.models import Rental

MAX_KEY_LENGTH = 255


def fingerprint(request: dict[str, Any]) -> str:
    """A stable hash of what was asked for (values as strings: Decimal 1.0 and 1 differ on purpose
    only if the client sent them differently, which is then a different request)."""
    canonical = json.dumps({k: str(v) for k, v in request.items() if v not in (None, "")}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def rental_for_key(user, request_key: str) -> Rental | None:
    return Rental.objects.filter(consumer=user, request_key=request_key).first()


def rent_once(
    *, user, request_key: str, request_fingerprint: str = "", **kwargs: Any
) -> tuple[Rental, str | None, bool]:
    """``services.rental_create`` at most once per (user, request_key).

    Returns (rental, generated private key or None, created). A repeat returns the first
    request's rental (created False); with a ``request_fingerprint`` a repeat asking for something
    else raises KeyReused.
    """
    existing = rental_for_key(user, request_key)
    if existing is None:
        try:
            created = services.rental_create(
                user=user, request_key=request_key, request_fingerprint=request_fingerprint, **kwargs
            )
        except IntegrityError:
            # A concurrent request with the same key committed first (the unique constraint).
            existing = rental_for_key(user, request_key)
            if existing is None:
                raise
        else:
            return created.rental, created.ssh_private_key, True
    if request_fingerprint and existing.request_fingerprint != request_fingerprint:
        raise KeyReused(
            "This Idempotency-Key was already used for a different request; use a new key for a new rental."
        )
    return existing, None, False
