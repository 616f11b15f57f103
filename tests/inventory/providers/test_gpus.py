"""Canonical GPU names line up across providers."""

from __future__ import annotations

import pytest

from inventory.providers.gpus import snap_vram_gb
from inventory.providers.tensordock.names import tensordock_gpu_type
from inventory.providers.vastai.names import vast_gpu_type


@pytest.mark.parametrize(
    ("mb", "gb"),
    [
        (24564, 24),  # RTX 4090
        (46068, 48),  # L40S reports ~45 GiB: snapped within 7 %
        (81559, 80),  # H100
        (40960, 40),  # A100 40GB
        (81920, 80),  # A100 80GB
        (8111, 8),  # GTX 1070, not round
        (143771, 141),  # H200
        (30000, 29),  # nothing known within 7 % -> round(MB / 1024)
        (0, 0),
        (None, 0),
    ],
)
def test_snap_vram(mb, gb):
    assert snap_vram_gb(mb) == gb


@pytest.mark.parametrize(
    ("name", "mb", "canonical"),
    [
        ("RTX 4090", 24564, "RTX 4090 24GB"),
        ("A100 PCIE", 40960, "A100 PCIE 40GB"),  # same name, told apart by gpu_ram
        ("A100 PCIE", 81920, "A100 PCIE 80GB"),
        ("A100 SXM4", 81920, "A100 SXM4 80GB"),
        ("H100 SXM", 81559, "H100 SXM 80GB"),
        ("Tesla V100", 32768, "V100 32GB"),
        ("  RTX  A6000 ", 49140, "RTX A6000 48GB"),
        ("RTX 6000Ada", 49140, "RTX 6000 Ada 48GB"),
        ("RTX A2000 12GB", 12000, "RTX A2000 12GB"),  # a name that carries its size keeps it
    ],
)
def test_vast_names(name, mb, canonical):
    assert vast_gpu_type(name, mb)[0] == canonical


@pytest.mark.parametrize(
    ("v0", "canonical", "vram"),
    [
        ("geforcertx4090-pcie-24gb", "RTX 4090 24GB", 24),
        ("h100-sxm5-80gb", "H100 SXM 80GB", 80),  # same canonical name as Vast's "H100 SXM"
        ("a100-pcie-80gb", "A100 PCIE 80GB", 80),
        ("a100-sxm4-80gb", "A100 SXM4 80GB", 80),
        ("rtxa6000-pcie-48gb", "RTX A6000 48GB", 48),
        ("l40-pcie-48gb", "L40 48GB", 48),
        ("v100-pcie-16gb", "V100 16GB", 16),
        ("l4-pcie-24gb", "L4 24GB", 24),
        ("geforcertx2080ti-pcie-11gb", "RTX 2080TI 11GB", 11),  # unknown: mechanical fallback
        ("h200-sxm5-141gb", "H200 SXM5 141GB", 141),  # unknown datacenter chip keeps form factor
        ("mystery", "MYSTERY", 0),
    ],
)
def test_tensordock_names(v0, canonical, vram):
    assert tensordock_gpu_type(v0) == (canonical, vram)


def test_same_card_same_name_on_both_providers():
    assert vast_gpu_type("RTX 4090", 24564)[0] == tensordock_gpu_type("geforcertx4090-pcie-24gb")[0]
    assert vast_gpu_type("A100 PCIE", 81920)[0] == tensordock_gpu_type("a100-pcie-80gb")[0]
    assert vast_gpu_type("H100 SXM", 81559)[0] == tensordock_gpu_type("h100-sxm5-80gb")[0]
    assert vast_gpu_type("Tesla V100", 16384)[0] == tensordock_gpu_type("v100-pcie-16gb")[0]
