"""API tokens for scripts and the CLI."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from common.tokens import token_hash


class ApiTokenQuerySet(models.QuerySet):
    def usable(self, now=None) -> ApiTokenQuerySet:
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)


class ApiToken(models.Model):
    """A named, revocable token (``Authorization: Token <key>``). Only its hash is stored; the key
    is shown once, at creation."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="First characters, to recognise a token in lists")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, *, user, name: str, expires_at=None) -> tuple[ApiToken, str]:
        """Create a token; returns it with the raw key, which is never retrievable again."""
        raw = f"gs_{secrets.token_urlsafe(32)}"
        token = cls.objects.create(
            user=user, name=name, key_hash=token_hash(raw), prefix=raw[:8], expires_at=expires_at
        )
        return token, raw

    @property
    def is_usable(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class RateCounter(models.Model):
    """A fixed-window counter that every web process sees (the throttles of shopper/throttling.py).

    Per-process counters let each of N web processes grant the whole allowance; the database is
    the one store every deployment has (Redis is optional). ``window_ends`` is epoch seconds: the
    atomic upsert compares it in SQL the same way on SQLite and PostgreSQL.
    """

    key = models.CharField(max_length=200, primary_key=True)
    count = models.PositiveIntegerField(default=0)
    window_ends = models.FloatField()

    def __str__(self) -> str:
        return f"{self.key}: {self.count}"


class Profile(models.Model):
    """Per-person page settings (one row, made when first saved)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="shopper_profile"
    )
    time_zone = models.CharField(
        max_length=64, blank=True, help_text="IANA time zone the pages write times in; empty: the browser's"
    )

    def __str__(self) -> str:
        return f"{self.user}: {self.time_zone or 'browser time zone'}"
