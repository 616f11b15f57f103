"""The deployment id: which of several shoppers sharing one provider account owns a machine.

Two deployments (staging and production, two teams) may rent from the same provider account.
Every instance is labelled ``shopper-<deployment id>-<rental uuid>`` and reconciliation acts only
on its own deployment's labels, so one never destroys the other's machines as orphans.

The id comes from ``SHOPPER_DEPLOYMENT_ID`` when set; otherwise one is generated at first start
and stored in the database (``DeploymentIdentity``, one row), so every process of the deployment,
and every restart, agrees on it. Rentals made before labels were scoped keep ``deployment_id=""``
and their old label ``shopper-<uuid>`` (adopted while live; see sessions/reconcile.py).

Label parsing is here and imports no Django model at module level: the offline kill switch
(``gpu-shopper cleanup-orphans``) uses it without a database or settings.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass

LABEL_PREFIX = "shopper-"
# No hyphen: the id ends at the first hyphen after the prefix, so "prod" never reads
# "shopper-prodeu-…" or "shopper-prod-eu-…" as its own. At most 19 characters, so the longest
# label, shopper-<19>-<36-char uuid>, is 64: Lambda's limit for instance and SSH key names
# (RUNPOD_LAMBDA.md 2.4); RunPod (v1 191, dstack 60 works), Vast and TensorDock take that too.
MAX_DEPLOYMENT_ID = 19
MAX_LABEL = 64
DEPLOYMENT_ID_RE = re.compile(rf"^[a-z0-9][a-z0-9_]{{0,{MAX_DEPLOYMENT_ID - 1}}}$")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

_cached: str | None = None


class InvalidDeploymentId(ValueError):
    pass


def validate_deployment_id(value: str) -> str:
    value = (value or "").strip()
    if not DEPLOYMENT_ID_RE.match(value):
        raise InvalidDeploymentId(
            f"deployment id {value!r} is not valid: 1-{MAX_DEPLOYMENT_ID} characters a-z, 0-9 and _, "
            f"starting with a letter or digit (labels must fit Lambda's {MAX_LABEL}-character names)"
        )
    return value


def scoped_prefix(deployment_id: str) -> str:
    """What every label of this deployment starts with."""
    return f"{LABEL_PREFIX}{deployment_id}-"


def make_label(deployment_id: str, rental_id: uuid.UUID | str) -> str:
    """``shopper-<deployment>-<uuid>``; ``shopper-<uuid>`` for a rental from before scoping."""
    if not deployment_id:
        return f"{LABEL_PREFIX}{rental_id}"
    return f"{scoped_prefix(deployment_id)}{rental_id}"


@dataclass(frozen=True)
class ParsedLabel:
    """``deployment`` is "" for an unscoped (pre-scoping) label."""

    deployment: str
    rental_id: uuid.UUID


def parse_label(label: str | None) -> ParsedLabel | None:
    """A shopper label, scoped or not; None for anything else (never ours to touch)."""
    if not label or not label.startswith(LABEL_PREFIX):
        return None
    rest = label[len(LABEL_PREFIX) :]
    if _UUID_RE.match(rest):
        return ParsedLabel("", uuid.UUID(rest))
    deployment, sep, tail = rest.partition("-")
    if sep and DEPLOYMENT_ID_RE.match(deployment) and _UUID_RE.match(tail):
        return ParsedLabel(deployment, uuid.UUID(tail))
    return None


def generate_id() -> str:
    return secrets.token_hex(4)


def deployment_id() -> str:
    """This deployment's id: the setting, else the one stored in the database (created at first
    use — the safety loop's start-up reconcile, outside any transaction; two processes starting
    at once agree, the row is unique). Cached per process once it is known to be committed: a
    row created inside a transaction that is then rolled back must not leave this process
    labelling machines with an id no other process knows."""
    global _cached
    if _cached:
        return _cached
    from django.conf import settings
    from django.db import IntegrityError, connection, transaction

    configured = settings.SHOPPER_DEPLOYMENT_ID or ""
    if configured:
        _cached = validate_deployment_id(configured)
        return _cached
    from sessions.models import DeploymentIdentity

    row = DeploymentIdentity.objects.filter(pk=1).first()
    if row is None:
        try:
            with transaction.atomic():
                row = DeploymentIdentity.objects.create(pk=1, deployment_id=generate_id())
        except IntegrityError:  # another process stored one first: use theirs
            row = DeploymentIdentity.objects.get(pk=1)
    if not connection.in_atomic_block:
        _cached = row.deployment_id
    return row.deployment_id


def reset_cache() -> None:
    """Tests: forget the cached id (settings or the stored row changed)."""
    global _cached
    _cached = None


def rental_default_deployment() -> str:
    """Default of ``Rental.deployment_id``: every new rental carries this deployment's id."""
    return deployment_id()
