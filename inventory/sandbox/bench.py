"""The sandbox machines' GPU benchmark: what the node agent's ``SHOPPER_AGENT_BENCH_CMD`` runs there.

A real rented machine runs the agent's PyTorch matrix-multiply snippet (``shopper/agent.py``
``BENCH_SNIPPET``). A sandbox machine has no GPU, so ``Node.env`` points the agent at
``bin/shopper-gpu-bench`` instead: a script that prints what the snippet prints, with figures a
real card of that model plausibly reaches: 60-90 % of its spec TFLOPS and 75-92 % of its spec
memory bandwidth, fixed per machine (drawn from the GPU's UUID, so a machine measures the same
every time and two machines of one model differ). A machine whose driver is broken (faults
TD-NODRIVER) answers as PyTorch without CUDA does: skipped.

``SPEC`` is per nvidia-smi name (what the sandbox's machines report): the dtype the snippet would
use (BF16 from compute capability 8.0, else FP32), dense TFLOPS in it, and GB/s. The figures are
copied from ``inventory/data/gpu_specs.csv``; ``tests/agent/test_benchmark.py`` holds them equal
to it and complete for every GPU of the sandbox catalogs.
"""

from __future__ import annotations

import json

SPEC: dict[str, tuple[str, float, float]] = {
    "NVIDIA GeForce RTX 3090": ("bf16", 71.2, 936.2),  # RTX 3090 24GB
    "NVIDIA GeForce RTX 4090": ("bf16", 165.2, 1008),  # RTX 4090 24GB
    "NVIDIA GeForce RTX 5090": ("bf16", 209.5, 1792),  # RTX 5090 32GB
    "NVIDIA RTX A6000": ("bf16", 154.8, 768),  # RTX A6000 48GB
    "NVIDIA RTX 6000 Ada Generation": ("bf16", 364.2, 960),  # RTX 6000 Ada 48GB
    "NVIDIA L40S": ("bf16", 362.05, 864),  # L40S 48GB
    "NVIDIA L40": ("bf16", 181.05, 864),  # L40 48GB
    "NVIDIA A100-PCIE-40GB": ("bf16", 312, 1555),  # A100 PCIE 40GB
    "NVIDIA A100 80GB PCIe": ("bf16", 312, 1935),  # A100 PCIE 80GB
    "NVIDIA A100-SXM4-40GB": ("bf16", 312, 1555),  # A100 SXM4 40GB
    "NVIDIA A100-SXM4-80GB": ("bf16", 312, 2039),  # A100 SXM4 80GB
    "NVIDIA H100 PCIe": ("bf16", 756, 2000),  # H100 PCIE 80GB
    "NVIDIA H100 80GB HBM3": ("bf16", 989, 3350),  # H100 SXM 80GB
    "NVIDIA H100 NVL": ("bf16", 835.5, 3900),  # H100 NVL 94GB
    "NVIDIA H200": ("bf16", 989, 4800),  # H200 141GB
    "Tesla V100-SXM2-16GB": ("fp32", 15.7, 900),  # V100 16GB
    "Tesla V100-SXM2-32GB": ("fp32", 15.7, 900),  # V100 32GB
    "Tesla V100-PCIE-16GB": ("fp32", 15.7, 900),  # V100 16GB
    "Tesla T4": ("fp32", 8.1, 320),  # T4 16GB
    "Quadro RTX 8000": ("fp32", 16.3, 672),  # Quadro RTX 8000 48GB
    "NVIDIA RTX A4000": ("bf16", 76.7, 448),  # RTX A4000 16GB
    "NVIDIA L4": ("bf16", 121, 300),  # L4 24GB
}
TFLOPS_SHARE = (0.60, 0.90)  # of spec: what dense matmuls reach on real cards
GBPS_SHARE = (0.75, 0.92)  # of spec: what a device-to-device copy reaches

GPU_BENCH = r'''#!{python}
"""Fake GPU benchmark of the sandbox cloud (inventory/sandbox/bench.py); reads ../gpu.json."""
import hashlib, json, sys, time
from pathlib import Path

SPEC = {spec}
st = json.loads((Path(__file__).resolve().parent.parent / "gpu.json").read_text())
repaired = st.get("repaired_at") and time.time() >= st["repaired_at"]
broken = st.get("driver_state", "ok") != "ok" and not repaired
if broken or st["name"] not in SPEC:
    print(json.dumps({{"skipped": "no CUDA device"}}))
    sys.exit(0)
dtype, tflops, gbps = SPEC[st["name"]]


def share(salt, low, high):
    digest = hashlib.sha256((st["uuids"][0] + salt).encode()).hexdigest()
    return low + (high - low) * int(digest[:8], 16) / 0xFFFFFFFF


time.sleep(0.2)  # the real snippet runs for a few seconds
print(json.dumps({{
    "dtype": dtype,
    "tflops": round(tflops * share("tflops", {tflops_low}, {tflops_high}), 1),
    "gbps": round(gbps * share("gbps", {gbps_low}, {gbps_high}), 1),
    "gpu_name": st["name"],
    "gpu_count": st["count"],
    "seconds": 0.2,
}}))
'''


def gpu_bench_script(python: str) -> str:
    """The text of ``bin/shopper-gpu-bench`` for a sandbox machine."""
    return GPU_BENCH.format(
        python=python,
        spec=json.dumps(SPEC, indent=1),
        tflops_low=TFLOPS_SHARE[0],
        tflops_high=TFLOPS_SHARE[1],
        gbps_low=GBPS_SHARE[0],
        gbps_high=GBPS_SHARE[1],
    )
