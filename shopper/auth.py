"""``Authorization: Token <key>`` for scripts and the CLI."""

from __future__ import annotations

from django.utils import timezone
from rest_framework import authentication, exceptions

from sessions.models import token_hash
from shopper.models import ApiToken


class ApiTokenAuthentication(authentication.TokenAuthentication):
    keyword = "Token"

    def authenticate_credentials(self, key: str):
        token = ApiToken.objects.usable().select_related("user").filter(key_hash=token_hash(key)).first()
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.", code="invalid_token")
        # Touch at most once a minute: a script polling every second should not write every time.
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return (token.user, token)
