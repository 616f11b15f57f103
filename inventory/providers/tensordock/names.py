"""TensorDock GPU names -> canonical ``gpu_type``: memory comes from the ``-24gb`` suffix of ``v0Name``."""

from __future__ import annotations

import re

from inventory.providers.gpus import KEEP_FORM_FACTOR, canonical_gpu_type

# TensorDock v0Name -> canonical model; the memory size is parsed from the name's suffix.
TENSORDOCK_MODELS: dict[str, str] = {
    "geforcertx4090-pcie": "RTX 4090",
    "geforcertx3090-pcie": "RTX 3090",
    "geforcertx3080ti-pcie": "RTX 3080 Ti",
    "geforcertx3080-pcie": "RTX 3080",
    "geforcertx3070-pcie": "RTX 3070",
    "geforcertx5090-pcie": "RTX 5090",
    "h100-sxm5": "H100 SXM",
    "h100-pcie": "H100 PCIE",
    "a100-sxm4": "A100 SXM4",
    "a100-pcie": "A100 PCIE",
    "l40s-pcie": "L40S",
    "l40-pcie": "L40",
    "l4-pcie": "L4",
    "rtxa6000-pcie": "RTX A6000",
    "rtxa5000-pcie": "RTX A5000",
    "rtxa4000-pcie": "RTX A4000",
    "rtx6000ada-pcie": "RTX 6000 Ada",
    "v100-pcie": "V100",
    "v100-sxm2": "V100",
}


def tensordock_gpu_type(v0_name: str) -> tuple[str, int]:
    """TensorDock ``v0Name`` (``"geforcertx4090-pcie-24gb"``) -> ("RTX 4090 24GB", 24).

    Unknown names fall back to a mechanical parse: ``"foo-pcie-12gb"`` -> ("FOO 12GB", 12).
    vram_gb is 0 when the name has no ``-NNgb`` suffix.
    """
    v0 = (v0_name or "").strip().lower()
    match = re.fullmatch(r"(.+?)-(\d+)gb", v0)
    stem, vram = (match.group(1), int(match.group(2))) if match else (v0, 0)
    model = TENSORDOCK_MODELS.get(stem)
    if model is None:
        parts = stem.split("-")
        chip = parts[0].removeprefix("geforce")
        chip = re.sub(r"^rtx(?=[a-z]?\d)", "RTX ", chip).upper()
        model = chip
        if len(parts) > 1 and parts[0].startswith(KEEP_FORM_FACTOR):
            model = f"{chip} {parts[1].upper()}"
    return canonical_gpu_type(model, vram), vram
