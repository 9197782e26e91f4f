"""Executors that join a Dask cluster: GPU ones (N worker processes per CUDA device, GPU=1 each) and CPU runners."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Hashable
from typing import Any

from cah_resources.errors import one_line
from cah_resources.fleet.compute import GPU, ClusterUnavailable, cluster_security, worker_config
from cah_resources.fleet.cuda_devices import (
    GpuDevice,
    GpuUnfit,
    fit_devices,
    physical_device_id,
    probe_cuda_devices,
    processes_per_device,
)
from cah_resources.fleet.settings import GIB, WorkerSettings

log = logging.getLogger(__name__)


def _split_memory(memory_limit: str, workers: int) -> int | None:
    from distributed.worker_memory import parse_memory_limit

    # "auto" shares the machine's RAM between its workers, like LocalCluster does.
    return parse_memory_limit(memory_limit, 1, max(1, workers), logger=log)


def gpu_worker_options(
    devices: list[GpuDevice],
    name: str,
    memory_limit: str = "auto",
    workers: int = 0,
    processes: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Nanny options for ``processes[index]`` workers per device (one by default): pinned to it, one thread each.

    Every process advertises ``GPU=1``: the resource counts GPU task slots, not devices, so a device with
    N processes runs N GPU tasks at once, each on its own model and interpreter (one process could not feed
    a device: its Python held the GIL while the GPU idled). Tasks keep asking ``GPU=1`` whatever N a
    machine chose, which a fractional ``GPU=1/N`` would not allow on a fleet mixing several N.
    """
    processes = processes or {}
    limit = _split_memory(memory_limit, workers or sum(processes.get(d.index, 1) for d in devices))
    options = []
    for d in devices:
        count = processes.get(d.index, 1)
        for p in range(count):
            options.append(
                {
                    "name": f"{name}-gpu{d.index}" + (f"-{p}" if count > 1 else ""),
                    "nthreads": 1,
                    "resources": {GPU: 1},
                    "env": {"CUDA_VISIBLE_DEVICES": physical_device_id(d.index)},
                    "memory_limit": limit,
                }
            )
    return options


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
    """Start one Nanny per options dict against ``scheduler`` and run until signalled or closed.

    Their workers run no sampling profiler, as the local ones do (``worker_config``).
    """
    from distributed import Nanny

    config = worker_config()
    nannies = [Nanny(scheduler, security=security, config=config, **o) for o in options]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.gather(*(n.start() for n in nannies))
    finished = [asyncio.ensure_future(n.finished()) for n in nannies]
    await asyncio.wait([*finished, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*(n.close(timeout=10) for n in nannies), return_exceptions=True)


def check_scheduler_address(address: str) -> None:
    """ClusterUnavailable unless ``address`` reads as a scheduler's, ``tls://HOST:PORT`` or ``tcp://HOST:PORT``."""
    from distributed.comm import get_address_host_port

    try:
        get_address_host_port(address)
    except (ValueError, TypeError) as exc:
        raise ClusterUnavailable(f"{address!r} is no scheduler address like tls://203.0.113.7:8786 ({exc})") from None


def run_worker(settings: WorkerSettings, devices: list[GpuDevice] | None = None) -> int:
    """``cah worker``: turn this machine into CPU runners or a GPU executor of a remote cluster.

    With ``settings.gpu``, ``devices`` are the CUDA devices to serve: probed when None.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    s = settings
    name = s.name or socket.gethostname()
    try:
        check_scheduler_address(s.scheduler)
        security = cluster_security(s.tls_ca_file, s.tls_cert, s.tls_key, role="worker")
        if s.scheduler.startswith("tls://") and not security.require_encryption:
            raise ClusterUnavailable(
                f"{s.scheduler} needs TLS: pass --tls-ca-file, --tls-cert and --tls-key (see deploy/make_tls.sh)"
            )
        if s.gpu:
            if s.processes_per_gpu < 1:
                raise GpuUnfit(f"--processes-per-gpu must be 1 or more, not {s.processes_per_gpu}")
            min_free = int(s.min_free_gb * GIB)
            fit, refused = fit_devices(probe_cuda_devices() if devices is None else devices, min_free)
            for reason in refused:
                print(f"cah worker: skipping {reason}", file=sys.stderr)
            if not fit:
                raise GpuUnfit("no GPU with enough free memory: " + "; ".join(refused or ["no device"]))
            processes, fewer = processes_per_device(fit, s.processes_per_gpu, min_free)
            for note in fewer:
                print(f"cah worker: {note}", file=sys.stderr)
            # --nworkers beside --gpu puts the machine's spare cores to work on CPU stages too.
            total = sum(processes.values()) + s.nworkers
            options = gpu_worker_options(fit, name, s.memory_limit, total, processes)
            options += cpu_worker_options(s.nworkers, s.nthreads, name, s.memory_limit, total)
            print(
                "cah worker: GPU executor with "
                + ", ".join(f"{d.name} (GPU {d.index}, {processes[d.index]} process(es))" for d in fit)
                + (f" and {s.nworkers} CPU worker(s)" if s.nworkers else "")
            )
        else:
            n = s.nworkers or max(1, (os.cpu_count() or 1) // s.nthreads)
            options = cpu_worker_options(n, s.nthreads, name, s.memory_limit)
            print(f"cah worker: {n} CPU worker(s) x {s.nthreads} thread(s)")
    except (GpuUnfit, ClusterUnavailable) as exc:
        print(f"cah worker: {exc}", file=sys.stderr)
        return 2
    print(f"cah worker: joining {s.scheduler} as {', '.join(o['name'] for o in options)}", flush=True)
    try:
        asyncio.run(serve_workers(s.scheduler, options, security))
    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:  # Nanny wraps the reason in "failed to start"
        cause = exc.__cause__ or exc
        print(f"cah worker: cannot join the scheduler at {s.scheduler}: {one_line(cause)}", file=sys.stderr)
        return 1
    return 0
