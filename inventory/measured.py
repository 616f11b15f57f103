"""Measured value (issue 18): what node agents measured on provider machines, matched to offers.

A rental's node agent reports achieved dense TFLOPS and memory GB/s of one GPU once after the
handoff (``shopper/agent.py``, ``sessions/agent_api.py``); :func:`benchmark_record` keeps it as a
:class:`~inventory.models.MachineBenchmark` of the machine behind the rented offer. Every offer of
that machine and GPU model then carries ``measured`` (the latest run) in the API and on the rent
page, beside the spec figures.

The machine is what the offer id says of it (:func:`machine_key`): Vast's ask id is one machine's
listing; TensorDock's offer id starts with its location (host node) id, shared by every GPU model
and count there, which is why a match also needs the same GPU model. RunPod and Lambda rent from
pools, so there the "machine" is the offer itself (same data centre, GPU and count).

The in-memory menu (``inventory/menu.py``) takes :func:`measured_index` once per menu version:
a new benchmark shows in the menu after the next offers refresh (about a minute), and at once on
the offer's own page and ``GET /api/v1/inventory/{id}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import IntegrityError, transaction

from inventory.models import MachineBenchmark

Key = tuple[str, str, str]  # (provider, machine, gpu_type)


def machine_key(provider: str, provider_offer_id: str) -> str:
    """The provider machine (or pool) behind an offer, from its id (see the module docstring)."""
    if provider == "tensordock":
        return provider_offer_id.split(":", 1)[0]
    return provider_offer_id


def _shown(row: MachineBenchmark, runs: int) -> dict:
    return {
        "tflops": f"{row.tflops:.1f}",
        "gbps": f"{row.gbps:.1f}",
        "dtype": row.dtype,
        "measured_at": row.measured_at.isoformat().replace("+00:00", "Z"),
        "runs": runs,
    }


def _latest(rows: Iterable[MachineBenchmark]) -> dict[Key, dict]:
    """The latest run per (provider, machine, GPU model), with how many runs there were."""
    latest: dict[Key, MachineBenchmark] = {}
    runs: dict[Key, int] = {}
    for row in rows:
        key = (row.provider, row.machine, row.gpu_type)
        runs[key] = runs.get(key, 0) + 1
        if key not in latest or (row.measured_at, row.pk) > (latest[key].measured_at, latest[key].pk):
            latest[key] = row
    return {key: _shown(row, runs[key]) for key, row in latest.items()}


def measured_index() -> dict[Key, dict]:
    """Every measured machine's latest figures (one query; a row per rental that reported)."""
    return _latest(MachineBenchmark.objects.all())


def measured_for(provider: str, provider_offer_id: str, gpu_type: str) -> dict | None:
    """The ``measured`` object of one offer, or None when its machine was never measured."""
    machine = machine_key(provider, provider_offer_id)
    rows = MachineBenchmark.objects.filter(provider=provider, machine=machine, gpu_type=gpu_type)
    return _latest(rows).get((provider, machine, gpu_type))


def with_measured(rows: list[dict], index: dict[Key, dict]) -> list[dict]:
    """API offer rows (``serializers.offer_rows``) with their ``measured`` object (or None)."""
    for row in rows:
        key = (row["provider"], machine_key(row["provider"], row["provider_offer_id"]), row["gpu_type"])
        row["measured"] = index.get(key)
    return rows


def benchmark_record(*, rental: Any, figures: dict) -> MachineBenchmark | None:
    """Store the checked ``figures`` (dtype, tflops, gbps, gpu_name) of ``rental``'s machine;
    None when this rental already reported (one report per rental: the first one stands)."""
    try:
        with transaction.atomic():
            return MachineBenchmark.objects.create(
                provider=rental.provider,
                machine=machine_key(rental.provider, rental.provider_offer_id),
                provider_offer_id=rental.provider_offer_id,
                gpu_type=rental.gpu_type,
                gpu_count=rental.gpu_count,
                gpu_name=figures.get("gpu_name", ""),
                dtype=figures["dtype"],
                tflops=figures["tflops"],
                gbps=figures["gbps"],
                rental_id=rental.pk,
            )
    except IntegrityError:
        return None
