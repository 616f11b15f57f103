"""GPU peak specifications (``inventory/data/gpu_specs.csv``) and the value figures of an offer.

The table is data the product owns: a data migration loads the CSV shipped in the repository, and
``manage.py load_gpu_specs [PATH]`` reloads or updates it from any CSV of the same columns without
a code change (``GPU_SPECS.md`` in the shared provider notes documents the columns). Rows are
joined to offers by canonical GPU name (``inventory/providers/<folder>/names.py``).

Value figures are for the whole offer, the price of the machine over ``gpu_count`` times the
per-GPU figure (the same ratio as per-GPU price over the per-GPU figure):

- ``usd_per_tflop_hour``: dense BF16 tensor TFLOPS, FP32 where the GPU has no usable BF16/FP16;
- ``usd_per_vram_gb_hour``: nominal VRAM in GB;
- ``usd_per_tbps_hour``: memory bandwidth in TB/s.

An offer whose GPU has no row gets None for all three (shown as "—"), never a guess.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

CSV_PATH = Path(__file__).resolve().parent / "data" / "gpu_specs.csv"

# Value figures are rounded to this (dollars); the cheapest are around $0.001 per TFLOP-hour.
VALUE_QUANTUM = Decimal("0.000001")
VALUE_FIELDS = ("usd_per_tflop_hour", "usd_per_vram_gb_hour", "usd_per_tbps_hour")

TEXT_COLUMNS = ("vendor", "architecture", "interconnect", "compute_capability", "source", "notes")
# column -> (required, decimal places the model stores)
NUMBER_COLUMNS = {
    "vram_gb": (True, 0),
    "memory_bandwidth_gbps": (True, 1),
    "fp32_tflops": (True, 2),
    "fp16_bf16_dense_tflops": (False, 2),
    "fp8_dense_tflops": (False, 2),
    "tdp_w": (False, 1),
}
COLUMNS = ("canonical_name", *TEXT_COLUMNS[:2], *NUMBER_COLUMNS, *TEXT_COLUMNS[2:])


class SpecFileError(ValueError):
    """A spec CSV that cannot be loaded; the message names the line and column."""


@dataclass(frozen=True)
class SpecFigures:
    """The per-GPU figures the value figures divide by (what the menu keeps per GPU model)."""

    tflops: Decimal  # dense BF16/FP16 tensor, else FP32
    vram_gb: Decimal
    tbps: Decimal  # memory bandwidth, TB/s

    def divisors(self) -> tuple[int, int, int]:
        """Exact integers for ``micro_dollars``: TFLOPS x 100, VRAM GB, bandwidth GB/s x 10 (the
        CSV's decimals are checked at load, so these are exact)."""
        return int(self.tflops * 100), int(self.vram_gb), int(self.tbps * 10_000)

    @property
    def tflops_float(self) -> float:
        return float(self.tflops)

    def per_gpu(self) -> tuple[Decimal, Decimal, Decimal]:
        """The divisors of the three value figures, in ``VALUE_FIELDS`` order."""
        return self.tflops, self.vram_gb, self.tbps


def read_spec_csv(path: Path | str = CSV_PATH) -> list[dict[str, Any]]:
    """Parse and check the whole file first: a bad file raises ``SpecFileError`` and loads nothing."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("canonical_name", *NUMBER_COLUMNS) if c not in (reader.fieldnames or [])]
            if missing:
                raise SpecFileError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = [_parse_row(raw, line) for line, raw in enumerate(reader, start=2)]
    except OSError as exc:
        raise SpecFileError(f"{path}: {exc.strerror or exc}") from exc
    names = [r["canonical_name"] for r in rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecFileError(f"{path}: duplicate canonical_name {', '.join(duplicates)}")
    if not rows:
        raise SpecFileError(f"{path}: no rows")
    return rows


def _parse_row(raw: dict[str, str | None], line: int) -> dict[str, Any]:
    name = (raw.get("canonical_name") or "").strip()
    if not name or len(name) > 64:
        raise SpecFileError(f"line {line}: canonical_name must be 1 to 64 characters")
    row: dict[str, Any] = {"canonical_name": name}
    for column in TEXT_COLUMNS:
        row[column] = (raw.get(column) or "").strip()
    for column, (required, places) in NUMBER_COLUMNS.items():
        text = (raw.get(column) or "").strip()
        if not text:
            if required:
                raise SpecFileError(f"line {line} ({name}): {column} is required")
            row[column] = None
            continue
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise SpecFileError(f"line {line} ({name}): {column} {text!r} is not a number") from None
        if not value.is_finite() or value <= 0 or value != value.quantize(Decimal(1).scaleb(-places)):
            raise SpecFileError(
                f"line {line} ({name}): {column} {text!r} must be a positive number "
                f"with at most {places} decimals"
            )
        row[column] = int(value) if places == 0 else value
    return row


def load_spec_rows(model, rows: list[dict[str, Any]], *, prune: bool = False) -> dict[str, int]:
    """Create or update ``model`` (``GpuSpec``, or its historical version in a migration) from
    parsed rows; with ``prune``, delete the rows the file no longer has. Returns counts."""
    from django.db import transaction
    from django.utils import timezone

    now = timezone.now()
    counts = {"created": 0, "updated": 0, "unchanged": 0, "deleted": 0}
    with transaction.atomic():
        existing = {s.canonical_name: s for s in model.objects.all()}
        for row in rows:
            spec = existing.get(row["canonical_name"])
            if spec is None:
                model.objects.create(**row, updated_at=now)
                counts["created"] += 1
            elif any(getattr(spec, k) != v for k, v in row.items()):
                for k, v in row.items():
                    setattr(spec, k, v)
                spec.updated_at = now
                spec.save()
                counts["updated"] += 1
            else:
                counts["unchanged"] += 1
        if prune:
            gone = set(existing) - {r["canonical_name"] for r in rows}
            counts["deleted"] = model.objects.filter(canonical_name__in=gone).delete()[0]
    return counts


def figures_of(spec) -> SpecFigures:
    """A ``GpuSpec`` (or parsed row) -> the figures the value ratios divide by."""
    tflops = spec.fp16_bf16_dense_tflops or spec.fp32_tflops
    return SpecFigures(
        tflops=Decimal(tflops),
        vram_gb=Decimal(spec.vram_gb),
        tbps=Decimal(spec.memory_bandwidth_gbps) / 1000,
    )


def spec_table(names: set[str] | None = None) -> dict[str, SpecFigures]:
    """Canonical name -> figures of every loaded row, or of ``names`` only (one query; the menu
    reads the whole table once per build)."""
    from inventory.models import GpuSpec

    rows = GpuSpec.objects.all() if names is None else GpuSpec.objects.filter(canonical_name__in=names)
    return {s.canonical_name: figures_of(s) for s in rows}


# A figure in millionths of a dollar from the price in ten-thousandths (Decimal(10, 4) x 10^4)
# and a divisor from SpecFigures.divisors: price_e4 * SCALE / (gpu_count * divisor).
MICRO_SCALES = (10_000, 100, 1_000_000)


def micro_dollars(numerator, denominator):
    """``numerator / denominator`` rounded half to even, exactly, in integers: works on Python
    ints and on numpy int64 arrays alike, so the menu (vectorised at build time) and the model
    (one offer) give the same figures to the last digit."""
    quotient, remainder = numerator // denominator, numerator % denominator
    return quotient + ((2 * remainder > denominator) | ((2 * remainder == denominator) & (quotient % 2 == 1)))


def value_figures(
    price_per_hour: Decimal, gpu_count: int, spec: SpecFigures | None
) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
    """(usd_per_tflop_hour, usd_per_vram_gb_hour, usd_per_tbps_hour) of a whole offer, or Nones
    when its GPU has no spec row."""
    if spec is None or gpu_count < 1:
        return None, None, None
    price_e4 = int(Decimal(price_per_hour).scaleb(4).to_integral_value())
    tflop, vram, tbps = (
        Decimal(int(micro_dollars(price_e4 * scale, gpu_count * divisor))).scaleb(-6)
        for scale, divisor in zip(MICRO_SCALES, spec.divisors(), strict=True)
    )
    return tflop, vram, tbps


def value_sort_key(price_per_hour: Decimal, gpu_count: int, spec: SpecFigures | None) -> float | None:
    """The ``value`` sort key: $ per TFLOP-hour unrounded, as the database computes
    ``price_per_hour / (gpu_count * tflops)`` (``filters.value_expression``), so the in-memory
    menu and the filter class order near-equal offers alike."""
    if spec is None or gpu_count < 1:
        return None
    return float(price_per_hour) / (gpu_count * spec.tflops_float)


def version_key(text: str | None) -> int | None:
    """A version such as CUDA "12.8" or driver "570.133.07" as one orderable integer (major,
    minor, patch; each below 1000); None when it is empty or not a version (such offers never
    pass a ``min_cuda``/``min_driver`` filter). Compares as versions: "12.10" > "12.9"."""
    parts = (text or "").strip().split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        return None
    major, minor, patch = (*map(int, parts), 0, 0)[:3]
    return major * 1_000_000 + minor * 1_000 + patch
