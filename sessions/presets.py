"""What a user may choose at rent time: image presets, disk size, exposed ports, start-up command.

Every choice is checked against what the offer's provider can honour *before* anything is rented
(``choices_check``): a preset, a port or a disk size it cannot honour is refused with the reason.
Provider facts are cited where they are used (shared/providers/PROVIDERS.md, FIELD_NOTES.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import ValidationError

VASTAI = "vastai"
TENSORDOCK = "tensordock"
RUNPOD = "runpod"
LAMBDA = "lambda"
OTHER = "*"  # any other provider: see DEFAULT_LIMITS

# Ports a user may not expose: 22 is SSH (always mapped by us), 8799 is the node agent's local
# status port (shopper/agent.py). At most this many ports per rental.
RESERVED_PORTS = {22: "port 22 is SSH, which every rental gets anyway", 8799: "port 8799 is the node agent's"}
MAX_PORTS = 8
MAX_ONSTART_CHARS = 4000


@dataclass(frozen=True)
class Preset:
    """One image choice. ``images`` maps provider -> image name; a provider missing from it cannot
    run the preset and ``refusals`` says why. ``ports`` are exposed by default; ``health_path`` is
    the HTTP path on ``ports[0]`` that answers once the service is up (inference presets)."""

    key: str
    name: str
    contains: str
    images: dict[str, str]
    refusals: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    onstart: str = ""
    health_path: str = ""


# Vast runs Docker images; TensorDock runs VM images named like "ubuntu2204" only (PROVIDERS.md 2.2;
# ubuntu2404 had no NVIDIA driver, FIELD_NOTES TD-NODRIVER / seed BUG-009). Vast's ssh runtypes
# replace the image's entrypoint, so a service image's server does not start by itself
# (FIELD_NOTES VA-SSH, seed/Ollama): the vLLM preset starts it from its start-up command.
_TD_CONTAINERS = (
    "TensorDock rents virtual machines with an OS image (ubuntu2204), not container images "
    "(PROVIDERS.md 2.2): pick “CUDA base” there and install what you need over SSH."
)
# RunPod: SSH exists only in images that start sshd, as RunPod's own images do from /start.sh
# (RUNPOD_LAMBDA.md 1.5, RPSKILL building-images): the presets use those; a service image
# without it would be a pod nobody can log in to.
_RUNPOD_CUDA = "runpod/base:0.6.2-cuda12.4.1"
_RUNPOD_TORCH = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
_RUNPOD_NO_SSHD = (
    "RunPod pods get SSH only from images that start sshd, as RunPod's own images do "
    "(RUNPOD_LAMBDA.md 1.5); the vLLM image does not: pick “PyTorch” there and pip install vllm."
)
# Lambda: virtual machines with Lambda Stack (Ubuntu, the NVIDIA driver, CUDA, PyTorch) and no
# choice of container image (RUNPOD_LAMBDA.md 2.4: the launch's ``image`` is an OS image).
LAMBDA_STACK = "lambda-stack"
_LAMBDA_VMS = (
    "Lambda rents virtual machines with Lambda Stack (Ubuntu with CUDA and PyTorch), not container "
    "images (RUNPOD_LAMBDA.md 2.4): pick “CUDA base” or “PyTorch” there."
)
_CUDA = "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04"
_TORCH = "vastai/pytorch:2.5.1-cuda-12.4.1-py311"
_VLLM = "vllm/vllm-openai:v0.6.6"
PRESETS: dict[str, Preset] = {
    p.key: p
    for p in (
        Preset(
            key="cuda",
            name="CUDA base",
            contains="Ubuntu 22.04 with the NVIDIA driver and CUDA 12.4 (toolkit on Vast.ai: nvcc, cuDNN)",
            images={
                VASTAI: _CUDA,
                TENSORDOCK: "ubuntu2204",
                RUNPOD: _RUNPOD_CUDA,
                LAMBDA: LAMBDA_STACK,
                OTHER: _CUDA,
            },
        ),
        Preset(
            key="pytorch",
            name="PyTorch",
            contains="PyTorch 2.5.1, CUDA 12.4, Python 3.11, Jupyter (Vast.ai's PyTorch image)",
            images={VASTAI: _TORCH, RUNPOD: _RUNPOD_TORCH, LAMBDA: LAMBDA_STACK, OTHER: _TORCH},
            refusals={TENSORDOCK: _TD_CONTAINERS},
        ),
        Preset(
            key="vllm",
            name="vLLM server",
            contains=(
                "vLLM 0.6.6 (CUDA 12.4) serving Qwen2.5-0.5B-Instruct with an OpenAI-compatible API on "
                "port 8000; /health answers once the model is loaded"
            ),
            images={VASTAI: _VLLM, OTHER: _VLLM},
            refusals={TENSORDOCK: _TD_CONTAINERS, RUNPOD: _RUNPOD_NO_SSHD, LAMBDA: _LAMBDA_VMS},
            ports=(8000,),
            onstart=(
                "nohup python3 -m vllm.entrypoints.openai.api_server --host 0.0.0.0 --port 8000 "
                "--model Qwen/Qwen2.5-0.5B-Instruct > /root/vllm.log 2>&1 &"
            ),
            health_path="/health",
        ),
    )
}
CUSTOM = "custom"


@dataclass(frozen=True)
class ProviderLimits:
    """What a provider accepts at create time. ``disk_default_gb`` is the disk the menu price
    includes (inventory adapters); ``ports`` is None when exposing ports is supported, else why not."""

    disk_min_gb: int
    disk_default_gb: int | None
    ports_refusal: str | None
    image_hint: str


LIMITS: dict[str, ProviderLimits] = {
    # Vast: disk in GB, the docs say at least 8 (PROVIDERS.md 1.4); the menu is priced at 10 GB.
    # Ports ride in env as "-p H:C" keys and are mapped to a host port Vast chooses (1.4, 1.6).
    VASTAI: ProviderLimits(
        disk_min_gb=8, disk_default_gb=10, ports_refusal=None, image_hint="a Docker image, e.g. ubuntu:22.04"
    ),
    # TensorDock: storage at least 100 GB (PROVIDERS.md 2.2). Port forwards were silently ignored
    # at some locations and remapped elsewhere (FIELD_NOTES TD-PORTFWD, seed BUG-008), so a port
    # we would promise cannot be kept: refused, with the way that works instead.
    TENSORDOCK: ProviderLimits(
        disk_min_gb=100,
        disk_default_gb=100,
        ports_refusal=(
            "TensorDock cannot expose ports reliably: its port forwards were silently ignored or "
            "remapped (FIELD_NOTES TD-PORTFWD). Reach the service through SSH instead, e.g. "
            "ssh -L 8888:localhost:8888 …"
        ),
        image_hint="a TensorDock OS image name, e.g. ubuntu2204",
    ),
    # RunPod: the container disk the menu is priced at is 40 GB (inventory/providers/runpod.py);
    # ports are mapped like 22 ("8888/tcp" -> a public port, RUNPOD_LAMBDA.md 1.5/1.6).
    RUNPOD: ProviderLimits(
        disk_min_gb=10,
        disk_default_gb=40,
        ports_refusal=None,
        image_hint="a Docker image that starts sshd, e.g. runpod/base:0.6.2-cuda12.4.1",
    ),
    # Lambda: each instance type comes with its own fixed disk (specs.storage_gib, in the price);
    # the default firewall lets in only SSH (RUNPOD_LAMBDA.md 2.8).
    LAMBDA: ProviderLimits(
        disk_min_gb=1,
        disk_default_gb=None,
        ports_refusal=(
            "Lambda's firewall lets in only SSH (port 22) by default (RUNPOD_LAMBDA.md 2.8). Reach "
            "the service through SSH instead, e.g. ssh -L 8888:localhost:8888 …"
        ),
        image_hint="Lambda Stack (Ubuntu with CUDA and PyTorch)",
    ),
}


# Any other provider (one added later, the tests' fake cloud) is taken to run container images
# like Vast.ai (the presets' OTHER image), with no disk minimum of its own and ports allowed.
DEFAULT_LIMITS = ProviderLimits(
    disk_min_gb=1, disk_default_gb=None, ports_refusal=None, image_hint="an image"
)


def limits_for(provider: str) -> ProviderLimits:
    return LIMITS.get(provider, DEFAULT_LIMITS)


def image_for(preset: Preset, provider: str) -> str:
    """The preset's image on ``provider`` ("" when it cannot run there)."""
    if provider in preset.images:
        return preset.images[provider]
    return "" if provider in preset.refusals else preset.images.get(OTHER, "")


@dataclass(frozen=True)
class Choices:
    """The checked rent-time choices of one rental."""

    preset: str  # a PRESETS key, or "custom"
    image: str
    disk_gb: int | None
    ports: tuple[int, ...]
    onstart: str

    @property
    def startup(self) -> str:
        return startup_script(self.preset, self.onstart)


def startup_script(preset: str, onstart: str) -> str:
    """The preset's start-up command (if any), then the user's own."""
    chosen = PRESETS.get(preset)
    return "\n".join(s for s in ((chosen.onstart if chosen else ""), onstart.strip()) if s)


def health_port(preset: str, ports) -> tuple[int, str] | None:
    """(port, path) whose HTTP answer says the preset's service is up, if it is exposed."""
    chosen = PRESETS.get(preset)
    if chosen and chosen.health_path and chosen.ports and chosen.ports[0] in (ports or ()):
        return chosen.ports[0], chosen.health_path
    return None


def presets_for(provider: str) -> list[dict]:
    """Every preset with what it contains and, for this provider, its image or why it is refused."""
    return [
        {
            "key": p.key,
            "name": p.name,
            "contains": p.contains,
            "image": image_for(p, provider),
            "refused": "" if image_for(p, provider) else p.refusals.get(provider, "Not offered here."),
            "ports": list(p.ports),
        }
        for p in PRESETS.values()
    ]


def _ports(value, limits: ProviderLimits) -> tuple[int, ...]:
    if value in (None, "", []):
        return ()
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace(" ", ",").split(",") if p.strip()]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        raise ValidationError({"ports": "Give ports as a list of numbers, e.g. [8888, 8000]."})
    ports: list[int] = []
    for part in parts:
        text = str(part)
        if isinstance(part, bool) or not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
            raise ValidationError({"ports": f"“{text[:20]}” is not a port: give numbers from 1 to 65535."})
        port = int(text)
        if port in RESERVED_PORTS:
            raise ValidationError({"ports": f"Port {port} cannot be exposed: {RESERVED_PORTS[port]}."})
        if port not in ports:
            ports.append(port)
    if len(ports) > MAX_PORTS:
        raise ValidationError({"ports": f"At most {MAX_PORTS} ports."})
    if ports and limits.ports_refusal:
        raise ValidationError({"ports": limits.ports_refusal})
    return tuple(ports)


def choices_check(
    *,
    provider: str,
    max_disk_gb: int | None,
    preset: str = "",
    image: str = "",
    disk_gb=None,
    ports=None,
    onstart: str = "",
) -> Choices:
    """Check the rent-time choices against ``provider``; raise ValidationError naming the field
    and the reason, before anything is rented. Empty values take the preset's (or the provider's)
    defaults. An explicit ``image`` with a preset is refused: say one or the other."""
    limits = limits_for(provider)
    image = (image or "").strip()
    preset = (preset or "").strip()
    if preset and preset != CUSTOM and preset not in PRESETS:
        raise ValidationError(
            {"preset": f"Unknown preset “{preset[:30]}”; one of {', '.join(PRESETS)}, custom."}
        )
    if image and (len(image) > 200 or any(c.isspace() or not c.isprintable() for c in image)):
        raise ValidationError({"image": "Give an image name without spaces (at most 200 characters)."})
    chosen = PRESETS.get(preset)
    if chosen and image and image != image_for(chosen, provider):
        raise ValidationError(
            {"image": f"Choose the preset “{chosen.name}” or an image of your own, not both."}
        )
    if chosen:
        if not image_for(chosen, provider):
            reason = chosen.refusals.get(provider, "not offered here.")
            raise ValidationError({"preset": f"“{chosen.name}” cannot run on {provider}: {reason}"})
        image = image_for(chosen, provider)
    elif not image:
        preset, image = "cuda", image_for(PRESETS["cuda"], provider)
    else:
        preset = CUSTOM
    if provider == TENSORDOCK and not image.isalnum():
        raise ValidationError({"image": _TD_CONTAINERS})
    if provider == LAMBDA and image != LAMBDA_STACK:
        raise ValidationError({"image": _LAMBDA_VMS})
    if provider == LAMBDA and disk_gb not in (None, "") and str(disk_gb) != str(max_disk_gb):
        fixed = f"{max_disk_gb} GB" if max_disk_gb else "its instance type's size"
        raise ValidationError({"disk_gb": f"Lambda instances come with a fixed disk of {fixed}."})

    if disk_gb in (None, ""):
        disk = limits.disk_default_gb
    else:
        text = str(disk_gb)
        if isinstance(disk_gb, bool) or not (text.isascii() and text.isdigit()):
            raise ValidationError({"disk_gb": "Give the disk size in whole GB, e.g. 50."})
        disk = int(text)
    top = max_disk_gb if max_disk_gb and max_disk_gb >= limits.disk_min_gb else None
    if disk is not None and (disk < limits.disk_min_gb or (top is not None and disk > top) or disk > 10_000):
        most = f"{top}" if top is not None else "10000"
        raise ValidationError(
            {"disk_gb": f"This offer's disk is {limits.disk_min_gb} to {most} GB; you asked {disk} GB."}
        )

    if ports in (None, "", []) and chosen and not ports_given(ports):
        port_list = chosen.ports if not limits.ports_refusal else ()
    else:
        port_list = _ports(ports, limits)
    onstart = (onstart or "").replace("\r\n", "\n")
    if len(onstart) > MAX_ONSTART_CHARS or "\x00" in onstart:
        raise ValidationError(
            {"onstart": f"The start-up command can be at most {MAX_ONSTART_CHARS} characters."}
        )
    return Choices(preset=preset, image=image, disk_gb=disk, ports=port_list, onstart=onstart.strip())


def ports_given(value) -> bool:
    """An explicit empty list means "no ports" (the API); None/"" means "the preset's"."""
    return isinstance(value, list | tuple)
