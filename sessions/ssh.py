"""Logging in to a rented machine to prove the SSH handoff works (we never proxy traffic)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import asyncssh


class SSHCheckFailed(Exception):
    pass


async def _run(host: str, port: int, user: str, private_key: str, command: str, timeout: float) -> str:
    key = asyncssh.import_private_key(private_key)
    async with asyncssh.connect(
        host, port=port, username=user, client_keys=[key], known_hosts=None,
        connect_timeout=timeout, login_timeout=timeout,
    ) as conn:  # fmt: skip
        result = await asyncio.wait_for(conn.run(command, check=False), timeout)
        if result.exit_status not in (0, None):
            raise SSHCheckFailed(f"`{command}` exited with {result.exit_status}: {str(result.stderr)[:200]}")
        return str(result.stdout)


def ssh_run(*, host: str, port: int, user: str, private_key: str, command: str, timeout: float = 15) -> str:
    """Log in with ``private_key`` and run ``command``; returns its output or raises SSHCheckFailed.

    Host keys are not pinned: the machine is brand new and its key is unknown to us; what we
    prove is that *our* key gets a shell, which is what the user will rely on.
    """
    try:
        return asyncio.run(_run(host, port, user, private_key, command, timeout))
    except SSHCheckFailed:
        raise
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        raise SSHCheckFailed(f"{type(exc).__name__}: {exc}") from exc


def ssh_banner(*, host: str, port: int, timeout: float = 10) -> str:
    """The server's SSH identification line, proving an SSH server answers on host:port."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            banner = sock.recv(256).decode(errors="replace").strip()
    except OSError as exc:
        raise SSHCheckFailed(f"{type(exc).__name__}: {exc}") from exc
    if not banner.startswith("SSH-"):
        raise SSHCheckFailed(f"not an SSH server: {banner[:60]!r}")
    return banner


# --------------------------------------------------------------------------------------------
# What GPUs the machine really has (the handoff proves the GPU, not just SSH)
# --------------------------------------------------------------------------------------------
# One login runs this. It always exits 0 so the answer is parsed rather than raised: the exit code
# of nvidia-smi travels in the ``shopper-rc=`` line. TensorDock hands over VMs whose nvidia-smi is
# missing (exit 127) or cannot talk to the driver (exit 9) (FIELD_NOTES TD-NODRIVER); the CUDA
# version exists only in nvidia-smi's header (FIELD_NOTES VA-CUDA-LIE: read it, don't trust the offer).
GPU_QUERY = (
    "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits 2>&1; "
    'echo "shopper-rc=$?"; '
    "nvidia-smi 2>/dev/null | grep -o 'CUDA Version: *[0-9.]*' | head -n 1; true"
)
# A card reports a little less memory than its marketed size (a 24 GB RTX 4090: 24564 MiB, an
# H100 80GB: 81559 MiB); anything below this share of what was sold is not what was sold.
VRAM_TOLERANCE = 0.9


@dataclass
class GpuReport:
    """What ``GPU_QUERY`` found: ``error`` is set when nvidia-smi did not work."""

    name: str = ""
    count: int = 0
    memory_gb: float = 0.0
    driver: str = ""
    cuda: str = ""
    error: str = ""

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "count": self.count,
            "memory_gb": self.memory_gb,
            "driver": self.driver,
            "cuda": self.cuda,
        }


def gpu_report_parse(output: str) -> GpuReport:
    """Parse the answer to ``GPU_QUERY``."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    rc_line = next((line for line in lines if line.startswith("shopper-rc=")), "")
    before = lines[: lines.index(rc_line)] if rc_line else lines
    rc = rc_line.removeprefix("shopper-rc=").strip()
    cuda_line = next((line for line in lines if line.startswith("CUDA Version:")), "")
    cuda = cuda_line.removeprefix("CUDA Version:").strip()
    if rc != "0":
        detail = before[0] if before else "no output"
        return GpuReport(error=f"nvidia-smi failed (exit {rc or '?'}): {detail}"[:300])
    gpus = []
    for line in before:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            return GpuReport(error=f"nvidia-smi answered something unexpected: {line}"[:300])
        try:
            gpus.append((parts[0], int(float(parts[1])), parts[2]))
        except ValueError:
            return GpuReport(error=f"nvidia-smi answered something unexpected: {line}"[:300])
    if not gpus:
        return GpuReport(error="nvidia-smi lists no GPU")
    name, _, driver = gpus[0]
    return GpuReport(
        name=name,
        count=len(gpus),
        memory_gb=round(min(g[1] for g in gpus) / 1024, 1),
        driver=driver,
        cuda=cuda,
    )


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return ()


# Words that name a vendor, brand, memory kind or form factor rather than the chip: nvidia-smi
# says "NVIDIA A100-SXM4-80GB" or "Tesla V100-PCIE-16GB" where the offer says "A100 SXM4 80GB" or
# "V100 16GB"; Vast says "Q RTX 8000" for "Quadro RTX 8000" and "RTX 6000Ada" for "NVIDIA RTX 6000
# Ada Generation". A false mismatch would destroy a good machine, so only the chip is compared.
_NOT_THE_CHIP = frozenset(
    {"NVIDIA", "GEFORCE", "TESLA", "GENERATION", "PCIE", "SXM", "SXM2", "SXM4", "SXM5"}
    | {"HBM2", "HBM2E", "HBM3", "HBM3E", "GDDR6", "GDDR6X"}
)


def _model_key(name: str) -> str:
    words = [w for w in re.split(r"[\s_-]+", name.upper()) if w]
    kept = [
        "Q" if w == "QUADRO" else w for w in words if w not in _NOT_THE_CHIP and not re.fullmatch(r"\d+GB", w)
    ]
    return "".join(kept)


def gpu_mismatch(found: GpuReport, *, gpu_type: str, gpu_count: int, vram_gb: int, cuda: str = "") -> str:
    """Why the machine is not what was sold, in plain words ("" when it is).

    Model by canonical name (``NVIDIA GeForce RTX 4090`` is ``RTX 4090 24GB``), at least the GPU
    count, VRAM within VRAM_TOLERANCE, and CUDA at least what the offer advertised (VA-CUDA-LIE).
    """
    sold = f"{gpu_count}× {gpu_type}"
    have = f"{found.count}× {found.name}"
    if _model_key(found.name) != _model_key(gpu_type):
        return f"the machine has {have}, not the {sold} that was rented"
    if found.count < gpu_count:
        return f"the machine has {found.count} GPU(s), not the {gpu_count} that were rented ({sold})"
    if vram_gb and found.memory_gb < vram_gb * VRAM_TOLERANCE:
        return (
            f"the machine's GPUs have {found.memory_gb} GB of memory, not the {vram_gb} GB that were rented"
        )
    if cuda and _version(found.cuda) < _version(cuda):
        return (
            f"the machine runs CUDA {found.cuda or 'unknown'} (driver {found.driver}), "
            f"older than the CUDA {cuda} the offer advertised"
        )
    return ""


def authorized_key_remove_command(public_key: str) -> str:
    """Remove one key (by its base64 blob) from root's and every home's authorized_keys, keeping
    each file's owner and mode (rewritten in place with cat, not replaced)."""
    import shlex

    blob = shlex.quote(public_key.split()[1])
    return (
        "for f in /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys; do "
        '[ -f "$f" ] || continue; '
        f'grep -vF {blob} "$f" > "$f.shopper-tmp"; cat "$f.shopper-tmp" > "$f"; rm -f "$f.shopper-tmp"; '
        "done; true"
    )
