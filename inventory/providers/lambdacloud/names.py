"""Lambda GPU descriptions -> canonical ``gpu_type``: memory comes from the description or a table."""

from __future__ import annotations

import re

from inventory.providers.gpus import KEEP_FORM_FACTOR, canonical_gpu_type

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
    if form and chip.lower().startswith(KEEP_FORM_FACTOR):
        model = f"{model} {form}"
    return canonical_gpu_type(model, size), size
