"""Vast.ai GPU names -> canonical ``gpu_type``: memory comes from ``gpu_ram`` (MB per GPU)."""

from __future__ import annotations

from inventory.providers.gpus import canonical_gpu_type, snap_vram_gb, split_model


def vast_gpu_type(gpu_name: str, gpu_ram_mb: float | int | None) -> tuple[str, int]:
    """Vast ``gpu_name`` + ``gpu_ram`` (MB per GPU) -> (canonical gpu_type, vram_gb)."""
    _, named_size = split_model(gpu_name)
    vram = named_size or snap_vram_gb(gpu_ram_mb)
    return canonical_gpu_type(gpu_name, vram), vram
