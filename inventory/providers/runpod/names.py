"""RunPod GPU ids -> canonical ``gpu_type``: memory comes from the catalog (GB per GPU)."""

from __future__ import annotations

import re

from inventory.providers.gpus import canonical_gpu_type, canonical_model, split_model

# RunPod GPU ids (RP2 GpuType.id, nvidia-smi style) whose model split_model cannot derive;
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
    _, named_size = split_model(collapsed)
    vram = memory_gb if memory_gb and memory_gb > 0 else named_size
    if model is None:
        model = re.sub(r"^TESLA ", "", canonical_model(collapsed), flags=re.IGNORECASE)
    return canonical_gpu_type(model, vram), vram
