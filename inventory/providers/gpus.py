"""Canonical GPU names shared by every adapter, so one card compares across providers.

A canonical ``gpu_type`` is ``"<model> <vram>GB"``: the model as Vast.ai spells it (spaces,
upper-case form factor: ``"A100 PCIE"``, ``"H100 SXM"``, ``"RTX 4090"``) with the memory size
appended, because Vast's names carry no size and the A100 40 GB and 80 GB share one name.

Each provider's own spellings live in its folder (``<provider>/names.py``): ``vast_gpu_type``,
``tensordock_gpu_type``, ``runpod_gpu_type``, ``lambda_gpu_type``. They all end in
``canonical_gpu_type`` here.
"""

from __future__ import annotations

import re

# Memory sizes (GB) that GPUs are sold with. Reported MB values are a little off (an RTX 4090
# shows 24564, an L40S 46068, an H100 81559), so they are snapped to these like gpuhunt does.
KNOWN_VRAM_GB: tuple[int, ...] = (
    4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 141, 180, 192,
)  # fmt: skip
VRAM_TOLERANCE = 0.07  # gpuhunt's correct_gpu_memory_gib tolerance

# Provider spellings of a model -> our canonical model (Vast's spelling unless noted).
MODEL_ALIASES: dict[str, str] = {
    "TESLA V100": "V100",
    "TESLA T4": "T4",
    "TESLA P100": "P100",
    "TESLA P40": "P40",
    "TESLA K80": "K80",
    "Q RTX 8000": "Quadro RTX 8000",
    "Q RTX 6000": "Quadro RTX 6000",
    "RTX 6000ADA": "RTX 6000 Ada",
    "RTX 5000ADA": "RTX 5000 Ada",
    "RTX 4000ADA": "RTX 4000 Ada",
    "H100 SXM5": "H100 SXM",  # TensorDock says sxm5, Vast says SXM: one canonical name
    "H100 SXM": "H100 SXM",
    "A100 SXM": "A100 SXM4",
}

# Datacenter chips whose form factor matters (Vast names them "A100 PCIE" vs "A100 SXM4").
KEEP_FORM_FACTOR = ("a100", "h100", "h200", "a800", "h800")


def snap_vram_gb(mb: float | int | None) -> int:
    """MB per GPU -> GB: the nearest known size within 7 %, else ``round(MB / 1024)``."""
    if not mb or mb <= 0:
        return 0
    gib = float(mb) / 1024
    nearest = min(KNOWN_VRAM_GB, key=lambda size: abs(size - gib))
    if abs(nearest - gib) <= nearest * VRAM_TOLERANCE:
        return nearest
    return round(gib)


# Vendor words some feeds put in front of the model (nvidia-smi style: "NVIDIA GeForce RTX 4090",
# "NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3"). They carry no information we keep.
_VENDOR_WORDS = frozenset({"NVIDIA", "GEFORCE"})
_MEMORY_WORDS = frozenset({"HBM2", "HBM2E", "HBM3", "HBM3E", "GDDR6", "GDDR6X"})
# Form factors are written upper-case in canonical names ("A100 PCIE", as Vast spells them).
_FORM_FACTORS = frozenset({"PCIE", "SXM", "SXM2", "SXM4", "SXM5", "NVL"})
_SIZE_WORD = re.compile(r"^(\d+)GB$", re.IGNORECASE)


def split_model(name: str) -> tuple[str, int]:
    """A provider's model name -> (model without vendor words or size, size in GB or 0).

    ``"NVIDIA A100-SXM4-40GB"`` -> ("A100 SXM4", 40); ``"GeForce RTX 4090"`` -> ("RTX 4090", 0).
    """
    words = (name or "").replace("-", " ").replace("_", " ").split()
    size = 0
    kept: list[str] = []
    memory = ""
    for word in words:
        upper = word.upper()
        match = _SIZE_WORD.match(word)
        if match:
            size = int(match.group(1))
        elif upper in _MEMORY_WORDS:
            memory = upper
        elif upper not in _VENDOR_WORDS:
            kept.append(upper if upper in _FORM_FACTORS else word)
    if [w.upper() for w in kept] == ["H100"] and memory == "HBM3":
        kept.append("SXM")  # nvidia-smi names the SXM5 card "NVIDIA H100 80GB HBM3" (PCIe says PCIe)
    return " ".join(kept), size


def canonical_model(name: str) -> str:
    """Normalize a provider's model name: drop vendor words and a size, collapse spaces, apply
    MODEL_ALIASES. ``"NVIDIA GeForce RTX 4090"`` and ``"RTX 4090"`` give the same model."""
    model, _ = split_model(name)
    return MODEL_ALIASES.get(model.upper(), model)


def canonical_gpu_type(model: str, vram_gb: int) -> str:
    """``"<model> <vram>GB"``; a model that already ends in a size keeps its own."""
    model = canonical_model(model)
    return f"{model} {vram_gb}GB" if vram_gb else model
