"""Canonical GPU names shared by every adapter, so one card compares across providers.

A canonical ``gpu_type`` is ``"<model> <vram>GB"``: the model as Vast.ai spells it (spaces,
upper-case form factor: ``"A100 PCIE"``, ``"H100 SXM"``, ``"RTX 4090"``) with the memory size
appended, because Vast's names carry no size and the A100 40 GB and 80 GB share one name.

- Vast.ai: ``vast_gpu_type(gpu_name, gpu_ram_mb)``; memory comes from ``gpu_ram`` (MB per GPU).
- TensorDock: ``tensordock_gpu_type(v0_name)``; memory comes from the ``-24gb`` suffix.
- RunPod: ``runpod_gpu_type(gpu_id, memory_gb)``; memory comes from the catalog (GB per GPU).
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
# Datacenter chips whose form factor matters (Vast names them "A100 PCIE" vs "A100 SXM4").
_KEEP_FORM_FACTOR = ("a100", "h100", "h200", "a800", "h800")


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


def _split_model(name: str) -> tuple[str, int]:
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
    model, _ = _split_model(name)
    return MODEL_ALIASES.get(model.upper(), model)


def canonical_gpu_type(model: str, vram_gb: int) -> str:
    """``"<model> <vram>GB"``; a model that already ends in a size keeps its own."""
    model = canonical_model(model)
    return f"{model} {vram_gb}GB" if vram_gb else model


def vast_gpu_type(gpu_name: str, gpu_ram_mb: float | int | None) -> tuple[str, int]:
    """Vast ``gpu_name`` + ``gpu_ram`` (MB per GPU) -> (canonical gpu_type, vram_gb)."""
    _, named_size = _split_model(gpu_name)
    vram = named_size or snap_vram_gb(gpu_ram_mb)
    return canonical_gpu_type(gpu_name, vram), vram


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
        if len(parts) > 1 and parts[0].startswith(_KEEP_FORM_FACTOR):
            model = f"{chip} {parts[1].upper()}"
    return canonical_gpu_type(model, vram), vram


# RunPod GPU ids (RP2 GpuType.id, nvidia-smi style) whose model _split_model cannot derive;
# the memory size comes from the catalog's ``memory`` (GB per GPU). RUNPOD_LAMBDA.md section 3.
RUNPOD_MODELS: dict[str, str] = {
    "NVIDIA RTX 6000 Ada Generation": "RTX 6000 Ada",
    "NVIDIA RTX 5000 Ada Generation": "RTX 5000 Ada",
    "NVIDIA RTX 4000 Ada Generation": "RTX 4000 Ada",
    "NVIDIA H200": "H200",  # the SXM part; gpu_specs.csv "H200 141GB" (Vast "H200")
    "NVIDIA H100 NVL": "H100 NVL",
    "Tesla V100-SXM2-16GB": "V100",
    "Tesla V100-SXM2-32GB": "V100",
    "Tesla V100-PCIE-16GB": "V100",
    "AMD Instinct MI300X OAM": "MI300X",
}


def runpod_gpu_type(gpu_id: str, memory_gb: int) -> tuple[str, int]:
    """RunPod ``gpu.id`` + ``memory`` -> (canonical gpu_type, vram_gb).

    ``"NVIDIA H100 80GB HBM3"`` is the SXM card (skypilot GPU_NAME_MAP) -> "H100 SXM 80GB";
    ``"NVIDIA A100-SXM4-80GB"`` -> "A100 SXM4 80GB"; the catalog's memory wins over a size in
    the id. Ids are matched with runs of spaces collapsed (RPV1 has "NVIDIA  RTX A4500")."""
    collapsed = " ".join((gpu_id or "").split())
    model = RUNPOD_MODELS.get(collapsed)
    _, named_size = _split_model(collapsed)
    vram = memory_gb if memory_gb and memory_gb > 0 else named_size
    if model is None:
        model = re.sub(r"^TESLA ", "", canonical_model(collapsed), flags=re.IGNORECASE)
    return canonical_gpu_type(model, vram), vram


# Lambda (RUNPOD_LAMBDA.md 2.3, 3): ``gpu_description`` is "A100 (40 GB SXM4)", "Tesla V100 (16 GB)",
# "H100 (80 GB SXM5)"; 3rd-party fixtures also show bare "A10" / "8x H100" (UNCONFIRMED, 4.14).
# gpuhunt's ``^(\d)x`` allows one-digit counts only; this allows any.
_LAMBDA_GPU = re.compile(
    r"^(?:(\d+)x\s+)?(?:Tesla\s+)?(.+?)\s*\((\d+)\s*GB(?:\s+(\w+))?\)\s*$", re.IGNORECASE
)
# Lambda model -> canonical model where ours differs (gpu_specs.csv names the GH200 "GH200 SXM").
LAMBDA_MODELS: dict[str, str] = {"GH200": "GH200 SXM"}
# Sizes for descriptions without "(NN GB)" (skypilot GPU_TO_MEMORY); an "_80gb" in the type name wins.
LAMBDA_MEMORY_GB: dict[str, int] = {"A10": 24, "A100": 40, "H100": 80, "GH200": 96, "B200": 180, "V100": 16}


def lambda_gpu_type(description: str, type_name: str = "") -> tuple[str, int]:
    """Lambda ``gpu_description`` (or ``description``) -> (canonical gpu_type, vram_gb).

    ``"A100 (40 GB SXM4)"`` -> ("A100 SXM4 40GB", 40); ``"H100 (80 GB SXM5)"`` -> ("H100 SXM 80GB",
    80); ``"A10 (24 GB PCIe)"`` -> ("A10 24GB", 24): the form factor is kept only for the chips
    whose canonical names carry one (A100, H100, ...), as for TensorDock. vram_gb is 0 when
    neither the description nor the table knows the size.
    """
    text = (description or "").strip()
    match = _LAMBDA_GPU.match(text)
    if match:
        chip, size, form = match.group(2).strip(), int(match.group(3)), (match.group(4) or "")
    else:  # "A10", "8x H100", "Tesla V100": no size in the text
        chip = re.sub(r"^(?:\d+x\s+)?(?:Tesla\s+)?", "", text, flags=re.IGNORECASE).strip()
        hint = re.search(r"_(\d+)gb", type_name or "")
        size = int(hint.group(1)) if hint else LAMBDA_MEMORY_GB.get(chip.upper(), 0)
        suffix = re.search(r"_(sxm\d|pcie)(?=_|$)", type_name or "")
        form = suffix.group(1) if suffix else ""
    model = LAMBDA_MODELS.get(chip.upper(), chip)
    if form and chip.lower().startswith(_KEEP_FORM_FACTOR):
        model = f"{model} {form}"
    return canonical_gpu_type(model, size), size
