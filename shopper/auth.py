"""``Authorization: Token <key>`` for scripts and the CLI."""

from __future__ import annotations

from django.utils import timezone
from rest_framework import authentication, exceptions

from common.cache import local_cache
from common.tokens import token_hash
from shopper.models import ApiToken

TOKEN_CACHE_PREFIX = "apitoken:"
# The inventory fast path trusts a token this long after the database last confirmed it; a
# revoked token stops working there at most this much later (everywhere else at once).
TOKEN_CACHE_SECONDS = 5


def token_user_id_cached(header: str) -> int | None:
    """The user id of a ``Token <key>`` header that was authenticated moments ago, else None."""
    keyword, _, key = header.partition(" ")
    if keyword != "Token" or not key:
        return None
    return local_cache.get(f"{TOKEN_CACHE_PREFIX}{token_hash(key.strip())}")


class ApiTokenAuthentication(authentication.TokenAuthentication):
    keyword = "Token"

    def authenticate_credentials(self, key: str):
        digest = token_hash(key)
        token = ApiToken.objects.usable().select_related("user").filter(key_hash=digest).first()
        if token is None or not token.user.is_active:
            local_cache.delete(f"{TOKEN_CACHE_PREFIX}{digest}")
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.", code="invalid_token")
        local_cache.set(f"{TOKEN_CACHE_PREFIX}{digest}", token.user_id, TOKEN_CACHE_SECONDS)
        # Touch at most once a minute: a script polling every second should not write every time.
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return (token.user, token)
