"""The CUDA devices of this machine: how many torch sees, their free memory, and which can serve GPU work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from cah_resources.fleet.settings import GIB, MIN_FREE_GPU_BYTES

# Runs in a short-lived child so that the CUDA contexts it makes (hundreds of MB per device)
# are released before the workers start.
_PROBE = """
import json, torch
if not torch.cuda.is_available():
    print(json.dumps({"error": "torch sees no usable CUDA device (driver missing, or a CPU-only torch build)"}))
else:
    devices = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        devices.append({"index": i, "name": torch.cuda.get_device_name(i), "free_bytes": free, "total_bytes": total})
    print(json.dumps({"devices": devices}))
"""


class GpuUnfit(RuntimeError):
    """This machine cannot serve as a GPU executor."""


@dataclass(frozen=True)
class GpuDevice:
    """One CUDA device as this process sees it (``index`` counts visible devices)."""

    index: int
    name: str
    free_bytes: int
    total_bytes: int


def _may_have_nvidia_gpu() -> bool:
    return bool(shutil.which("nvidia-smi") or os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/dxg"))


def count_visible_cuda_devices() -> int:
    """CUDA devices torch can use here; 0 without importing torch on machines with no NVIDIA driver."""
    if not _may_have_nvidia_gpu():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def probe_cuda_devices(timeout_s: float = 120.0) -> list[GpuDevice]:
    """Every visible CUDA device with its free memory, or one line saying why there is none."""
    if not _may_have_nvidia_gpu():
        raise GpuUnfit("no NVIDIA GPU here (no nvidia-smi, no /dev/nvidiactl): install the driver or run without --gpu")
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise GpuUnfit(f"probing CUDA took over {timeout_s:.0f}s; is the GPU driver healthy (nvidia-smi)?") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise GpuUnfit(f"probing CUDA failed: {last}")
    report = json.loads(lines[-1])
    if "error" in report:
        raise GpuUnfit(report["error"])
    return [GpuDevice(**d) for d in report["devices"]]


def fit_devices(
    devices: list[GpuDevice], min_free_bytes: int = MIN_FREE_GPU_BYTES
) -> tuple[list[GpuDevice], list[str]]:
    """The devices with enough free memory, and a reason for each one left out."""
    fit, refused = [], []
    for d in devices:
        if d.free_bytes >= min_free_bytes:
            fit.append(d)
        else:
            refused.append(
                f"GPU {d.index} ({d.name}) has {d.free_bytes / GIB:.1f} GiB free, needs {min_free_bytes / GIB:.1f} GiB"
            )
    return fit, refused


def physical_device_id(index: int, visible: str | None = None) -> str:
    """What to put in a child's CUDA_VISIBLE_DEVICES so that it sees our ``index``-th device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if index < len(ids):
            return ids[index]
    return str(index)


def processes_per_device(
    devices: list[GpuDevice], wanted: int, min_free_bytes: int = MIN_FREE_GPU_BYTES
) -> tuple[dict[int, int], list[str]]:
    """Worker processes to start on each device: ``wanted``, fewer where its free memory holds fewer.

    Each process loads its own models and CUDA context, so each needs ``min_free_bytes``; a device
    that holds fewer than ``wanted`` gets as many as fit (at least one: it passed ``fit_devices``),
    with a line saying so.
    """
    counts, notes = {}, []
    for d in devices:
        fit = max(1, min(wanted, d.free_bytes // max(1, min_free_bytes)))
        counts[d.index] = fit
        if fit < wanted:
            notes.append(
                f"GPU {d.index} ({d.name}) has {d.free_bytes / GIB:.1f} GiB free: {fit} worker process(es), "
                f"not {wanted} ({min_free_bytes / GIB:.1f} GiB each)"
            )
    return counts, notes
