"""Compare GPUs: one row per GPU model on the menu, ranked by value (the page ``/gpus/``,
``GET /api/v1/gpus`` and ``gpu-shopper gpus``).

Built from the same in-memory menu as the offers page (``inventory/menu.py``), over the offers
visible now, and kept on the menu until a suppression starts or ends (the menu's
``generation`` and its next unhide time), so repeated requests cost a dictionary lookup.

Per model: the offers available, the cheapest price per GPU-hour per provider, the value
figures of its best-value offer (the three figures are proportional to the per-GPU price, so
one offer is the cheapest on all three), and the best (highest) confidence of its visible offers
(``inventory/confidence.py``, the menu's ``confidence`` column).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import numpy as np

from inventory.filters import VALUE_SORT_KEY
from inventory.menu import NUMERIC, Menu, _epoch_us
from inventory.serializers import ROW_FIELDS
from inventory.specs import VALUE_FIELDS


def _money(scaled: int) -> str:
    return f"{Decimal(int(scaled)) / NUMERIC['price_per_gpu_hour']:.4f}"


def _confidence(scaled: int) -> str:
    """A confidence column value (thousandths, ``menu.NUMERIC``) as the API writes it: "0.820"."""
    return f"{Decimal(int(scaled)) / NUMERIC['confidence']:.3f}"


def gpu_models(menu: Menu, now: datetime) -> list[dict[str, Any]]:
    """The compare rows for ``now`` (see the module docstring), best value first; models without
    a spec row last, by name."""
    now_us = _epoch_us(now)
    cached = getattr(menu, "_gpu_models", None)
    if cached is not None and cached[0] == menu.generation and cached[1] <= now_us < cached[2]:
        return cached[3]
    generation = menu.generation
    rows = _build(menu, now_us)
    valid_from = max((t for t in menu.unhide_times if t <= now_us), default=np.iinfo(np.int64).min)
    valid_until = next((t for t in menu.unhide_times if t > now_us), np.iinfo(np.int64).max)
    menu._gpu_models = (generation, valid_from, valid_until, rows)
    return rows


def _build(menu: Menu, now_us: int) -> list[dict[str, Any]]:
    visible = np.flatnonzero(menu.hidden_until <= now_us)
    gpu = menu.columns["gpu_type"][visible]
    provider = menu.columns["provider"][visible]
    per_gpu = menu.columns["price_per_gpu_hour"][visible]
    value = menu.columns[VALUE_SORT_KEY][visible]
    confidence = menu.columns["confidence"][visible]
    vram_at = ROW_FIELDS.index("vram_gb")
    rows = []
    for code in np.unique(gpu).tolist():
        mine = np.flatnonzero(gpu == code)
        positions = visible[mine]
        providers = []
        for p in np.unique(provider[mine]).tolist():
            prices = per_gpu[mine][provider[mine] == p]
            providers.append(
                {
                    "provider": menu.names["provider"][p],
                    "cheapest_price_per_gpu_hour": _money(prices.min()),
                    "offers": len(prices),
                }
            )
        providers.sort(key=lambda entry: (Decimal(entry["cheapest_price_per_gpu_hour"]), entry["provider"]))
        values = value[mine]
        has_value = not np.isnan(values).all()
        best_at = int(positions[int(np.nanargmin(values))] if has_value else positions[0])
        best, figures = menu.tuples[best_at], menu.value_strings(best_at)
        name = menu.names["gpu_type"][code]
        spec = menu.specs.get(name)
        row = {
            "gpu_type": name,
            "vram_gb": best[vram_at],
            "offers": len(mine),
            "cheapest_price_per_gpu_hour": providers[0]["cheapest_price_per_gpu_hour"],
            "providers": providers,
            "tflops": None if spec is None else f"{spec.tflops:f}",
            **dict(zip(VALUE_FIELDS, figures, strict=True)),
            "best_confidence": _confidence(confidence[mine].max()),
        }
        rows.append(row)
    rows.sort(
        key=lambda r: (
            r["usd_per_tflop_hour"] is None,
            Decimal(r["usd_per_tflop_hour"] or 0),
            r["gpu_type"],
        )
    )
    return rows
