"""Hashing of secrets and private identifiers (API and agent tokens, session keys, login names)."""

from __future__ import annotations

import hashlib


def token_hash(raw: str | bytes) -> str:
    """The SHA-256 hex digest of ``raw``: what is stored (API and agent tokens) or used as a cache
    key instead of the secret itself. High-entropy secrets need no slow password hash."""
    return hashlib.sha256(raw.encode() if isinstance(raw, str) else raw).hexdigest()
