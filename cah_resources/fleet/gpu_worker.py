"""Executors that join a Dask cluster: GPU ones (one worker per CUDA device, GPU=1) and CPU runners."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from cah_resources.fleet.compute import GPU, ClusterUnavailable, cluster_security
from cah_resources.fleet.settings import GIB, MIN_FREE_GPU_BYTES, WorkerSettings

log = logging.getLogger(__name__)


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


def _split_memory(memory_limit: str, workers: int) -> int | None:
    from distributed.worker_memory import parse_memory_limit

    # "auto" shares the machine's RAM between its workers, like LocalCluster does.
    return parse_memory_limit(memory_limit, 1, max(1, workers), logger=log)


def gpu_worker_options(
    devices: list[GpuDevice], name: str, memory_limit: str = "auto", workers: int = 0
) -> list[dict[str, Any]]:
    """Nanny options for one worker per device: pinned to it, one thread, advertising GPU=1."""
    limit = _split_memory(memory_limit, workers or len(devices))
    return [
        {
            "name": f"{name}-gpu{d.index}",
            "nthreads": 1,
            "resources": {GPU: 1},
            "env": {"CUDA_VISIBLE_DEVICES": physical_device_id(d.index)},
            "memory_limit": limit,
        }
        for d in devices
    ]


def cpu_worker_options(
    n_workers: int, nthreads: int, name: str, memory_limit: str = "auto", workers: int = 0
) -> list[dict[str, Any]]:
    """Nanny options for CPU runners: no GPU resource and no device, so GPU work never lands here."""
    limit = _split_memory(memory_limit, workers or n_workers)
    return [
        {
            "name": f"{name}-{i}",
            "nthreads": nthreads,
            "env": {"CUDA_VISIBLE_DEVICES": ""},
            "memory_limit": limit,
        }
        for i in range(n_workers)
    ]


_WARM: dict[Hashable, Any] = {}
_WARM_LOCK = threading.Lock()


def warm_model(key: Hashable, load: Callable[[], Any]) -> Any:
    """``load()`` once per worker process, then the same object for every later task.

    Dask runs a worker's tasks in one long-lived process, so a CLIP model kept here stays on its
    GPU between shards instead of being read from disk and moved to the device for each one.
    """
    with _WARM_LOCK:
        if key not in _WARM:
            _WARM[key] = load()
        return _WARM[key]


async def serve_workers(scheduler: str, options: list[dict[str, Any]], security: Any) -> None:
    """Start one Nanny per options dict against ``scheduler`` and run until signalled or closed."""
    from distributed import Nanny

    nannies = [Nanny(scheduler, security=security, **o) for o in options]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.gather(*(n.start() for n in nannies))
    finished = [asyncio.ensure_future(n.finished()) for n in nannies]
    await asyncio.wait([*finished, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*(n.close(timeout=10) for n in nannies), return_exceptions=True)


def run_worker(settings: WorkerSettings) -> int:
    """``cah worker``: turn this machine into CPU runners or a GPU executor of a remote cluster."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    s = settings
    name = s.name or socket.gethostname()
    try:
        security = cluster_security(s.tls_ca_file, s.tls_cert, s.tls_key, role="worker")
        if s.scheduler.startswith("tls://") and not security.require_encryption:
            raise ClusterUnavailable(
                f"{s.scheduler} needs TLS: pass --tls-ca-file, --tls-cert and --tls-key (see deploy/make_tls.sh)"
            )
        if s.gpu:
            fit, refused = fit_devices(probe_cuda_devices(), int(s.min_free_gb * GIB))
            for reason in refused:
                print(f"cah worker: skipping {reason}", file=sys.stderr)
            if not fit:
                raise GpuUnfit("no GPU with enough free memory: " + "; ".join(refused or ["no device"]))
            # --nworkers beside --gpu puts the machine's spare cores to work on CPU stages too.
            total = len(fit) + s.nworkers
            options = gpu_worker_options(fit, name, s.memory_limit, total)
            options += cpu_worker_options(s.nworkers, s.nthreads, name, s.memory_limit, total)
            print(
                f"cah worker: GPU executor with {', '.join(f'{d.name} (GPU {d.index})' for d in fit)}"
                f"{f' and {s.nworkers} CPU worker(s)' if s.nworkers else ''}"
            )
        else:
            n = s.nworkers or max(1, (os.cpu_count() or 1) // s.nthreads)
            options = cpu_worker_options(n, s.nthreads, name, s.memory_limit)
            print(f"cah worker: {n} CPU worker(s) x {s.nthreads} thread(s)")
    except (GpuUnfit, ClusterUnavailable) as exc:
        print(f"cah worker: {exc}", file=sys.stderr)
        return 2
    print(f"cah worker: joining {s.scheduler} as {', '.join(o['name'] for o in options)}", flush=True)
    asyncio.run(serve_workers(s.scheduler, options, security))
    return 0
