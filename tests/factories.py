"""factory_boy factories for the rows tests write directly: users, offers, SSH keys and rentals.

Each factory's defaults make a valid row on their own; a test passes only what it is about::

    RentalFactory(consumer=user)                          # ACTIVE, ends in 2 h, hard max in 12 h
    RentalFactory(consumer=user, status=Status.BOOTING)
    RentalFactory(consumer=user, reachable=True, with_key=True)   # SSH endpoint + a private key
    RentalFactory(offer=offer, status=Status.PENDING)     # the machine copied from an Offer row

Times are computed from one aware UTC ``now`` per row (a param: pass ``now=`` to pin it).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import factory
from django.conf import settings
from django.utils import timezone
from factory.django import DjangoModelFactory

from inventory.models import Offer
from sessions import keys
from sessions.models import Rental, SSHKey, Status, token_hash


class UserFactory(DjangoModelFactory):
    """A user made through ``create_user``: ``<username>@example.com``, password ``pw-<username>-123``."""

    class Meta:
        model = settings.AUTH_USER_MODEL

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password = factory.LazyAttribute(lambda o: f"pw-{o.username}-123")

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return model_class._default_manager.create_user(*args, **kwargs)


class OfferFactory(DjangoModelFactory):
    """One RTX 4090 24GB at vastai, $1.0000/h, in Oregon; ``price_per_hour`` may be a str."""

    class Meta:
        model = Offer

    provider = "vastai"
    provider_offer_id = factory.Sequence(lambda n: f"offer-{n}")
    gpu_type = "RTX 4090 24GB"
    gpu_count = 1
    vram_gb = 24
    price_per_hour = Decimal("1.0000")
    price_per_gpu_hour = factory.LazyAttribute(
        lambda o: Offer.per_gpu(Decimal(str(o.price_per_hour)), o.gpu_count)
    )
    location = "Oregon, US"
    reliability = Decimal("0.9900")
    fetched_at = factory.LazyFunction(timezone.now)

    @classmethod
    def _adjust_kwargs(cls, **kwargs):
        kwargs["price_per_hour"] = Decimal(str(kwargs["price_per_hour"]))
        return kwargs


class SSHKeyFactory(DjangoModelFactory):
    """A registered public key named "laptop" (a fresh ed25519 key unless given), with its real
    fingerprint."""

    class Meta:
        model = SSHKey

    user = factory.SubFactory(UserFactory)
    name = "laptop"
    public_key = factory.LazyFunction(lambda: keys.keypair_generate("laptop")[0])
    fingerprint = factory.LazyAttribute(lambda o: keys.public_key_fingerprint(o.public_key))


def _from_offer(field: str, default):
    """The ``offer``'s value of ``field`` when an offer is given, else ``default``."""
    return factory.LazyAttribute(lambda o: getattr(o.offer, field) if o.offer is not None else default)


class RentalFactory(DjangoModelFactory):
    """A Rental row written directly, in any status, without a provider call.

    Defaults: a new user's ACTIVE rental of one RTX 4090 24GB (vastai offer ``o-1``, 24 GB) at
    $0.50/h (tests/test_metrics.py and tests/cli/test_live.py bill that price), no markup, the
    reservation ending ``reservation_hours`` (2) and the hard maximum ``hard_max_hours`` (12) after
    ``now``. With ``offer=`` the provider, offer id, GPU type and count, VRAM and price are the
    offer's.

    Params:
      - ``now``: the instant every computed time counts from (default: ``timezone.now()``).
      - ``private_key``: stored encrypted as the generated key (``ssh_private_key_encrypted``).
      - ``agent_token``: the node agent's raw token, stored as its hash.
    Traits:
      - ``running``: ``active_since = now``.
      - ``reachable``: running, and the SSH endpoint ``root@203.0.113.7:40022``.
      - ``with_key``: a freshly generated private key is stored (the public half is not).
    """

    class Meta:
        model = Rental

    class Params:
        now = factory.LazyFunction(timezone.now)
        reservation_hours = 2
        hard_max_hours = 12
        private_key = ""
        agent_token = ""
        running = factory.Trait(active_since=factory.SelfAttribute("now"))
        reachable = factory.Trait(running=True, ssh_host="203.0.113.7", ssh_port=40022, ssh_user="root")
        with_key = factory.Trait(private_key=factory.LazyFunction(lambda: keys.keypair_generate("t")[1]))

    consumer = factory.SubFactory(UserFactory)
    offer = None
    provider = _from_offer("provider", "vastai")
    provider_offer_id = _from_offer("provider_offer_id", "o-1")
    gpu_type = _from_offer("gpu_type", "RTX 4090 24GB")
    gpu_count = _from_offer("gpu_count", 1)
    vram_gb = _from_offer("vram_gb", 24)
    price_per_hour = _from_offer("price_per_hour", Decimal("0.5000"))
    status = Status.ACTIVE
    reservation_ends_at = factory.LazyAttribute(lambda o: o.now + timedelta(hours=o.reservation_hours))
    hard_max_at = factory.LazyAttribute(lambda o: o.now + timedelta(hours=o.hard_max_hours))
    ssh_private_key_encrypted = factory.LazyAttribute(
        lambda o: keys.secret_encrypt(o.private_key) if o.private_key else ""
    )
    agent_token_hash = factory.LazyAttribute(lambda o: token_hash(o.agent_token) if o.agent_token else "")
