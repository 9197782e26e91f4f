"""Real Dask peers on loopback for tests: TLS certificates, a scheduler and worker processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distributed import Client

from cah_resources.fleet.compute import cluster_security
from cah_resources.samples.cluster_peers import free_port, stop_process_group, tls_flags

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_tls(out: Path) -> Path:
    """The cluster's CA and certificates, made by the script users run (2048-bit keys: faster)."""
    subprocess.run(
        ["bash", str(REPO / "deploy" / "make_tls.sh"), str(out)],
        check=True,
        capture_output=True,
        env={**os.environ, "KEY_BITS": "2048"},
        timeout=120,
    )
    return out


def client_security(tls: Path):
    return cluster_security(str(tls / "ca.pem"), str(tls / "client.pem"), str(tls / "client-key.pem"))


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


def _start(args: list[str], log: Path) -> subprocess.Popen:
    handle = open(log, "ab")  # noqa: SIM115 - the peer process writes it for as long as it runs
    # Tasks defined in test modules are pickled by reference: the peers must be able to import them.
    path = os.pathsep.join(p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)


@contextmanager
def scheduler(tls: Path | None, logs: Path) -> Iterator[str]:
    """A `dask scheduler` process on loopback; yields its address (tls:// when ``tls`` is given)."""
    port = free_port()
    args = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    if tls is not None:
        args += ["--protocol", "tls", *tls_flags(tls, "scheduler")]
    proc = _start(args, logs / f"scheduler-{port}.log")
    try:
        _wait_for_port(port, proc)
        yield f"{'tls' if tls else 'tcp'}://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)


@contextmanager
def cah_worker(address: str, name: str, tls: Path | None, logs: Path, *extra: str) -> Iterator[subprocess.Popen]:
    """A `cah worker` process (the command fleet servers run), CPU mode, one worker process."""
    argv = ["--scheduler", address, "--name", name, "--nworkers", "1", *extra]
    if tls is not None:
        argv += tls_flags(tls, "worker")
    proc = _start([sys.executable, "-m", "cah_assets.cli", "worker", *argv], logs / f"worker-{name}.log")
    try:
        yield proc
    finally:
        stop_process_group(proc)


@contextmanager
def gpu_executor(address: str, name: str, logs: Path, processes_per_gpu: int, gib_free: float = 80.0):
    """`cah worker --gpu` (``run_worker``) serving one stand-in CUDA device, for machines without one.

    Everything after the CUDA probe is the command's own: per-device process counts, Nanny options,
    the workers joining ``address``. Yields the process; its log says what it started.
    """
    code = (
        "import sys\n"
        "from cah_resources.fleet.cuda_devices import GpuDevice\n"
        "from cah_resources.fleet.gpu_worker import run_worker\n"
        "from cah_resources.fleet.settings import GIB, WorkerSettings\n"
        f"settings = WorkerSettings(scheduler={address!r}, gpu=True, name={name!r}, "
        f"processes_per_gpu={processes_per_gpu}, memory_limit='1GB')\n"
        f"sys.exit(run_worker(settings, [GpuDevice(0, 'stand-in', int({gib_free} * GIB), int({gib_free} * GIB))]))\n"
    )
    proc = _start([sys.executable, "-c", code], logs / f"gpu-executor-{name}.log")
    try:
        yield proc
    finally:
        stop_process_group(proc)


@contextmanager
def dask_worker(address: str, name: str, tls: Path | None, logs: Path, *extra: str) -> Iterator[subprocess.Popen]:
    """A plain `dask worker` process (with its nanny), e.g. advertising ``--resources GPU=1``."""
    args = [str(BIN / "dask"), "worker", address, "--name", name, "--nthreads", "1", "--no-dashboard", *extra]
    if tls is not None:
        args += tls_flags(tls, "worker")
    proc = _start(args, logs / f"worker-{name}.log")
    try:
        yield proc
    finally:
        stop_process_group(proc)


def wait_for_worker_names(address: str, tls: Path | None, names: set[str], timeout: float = 90.0) -> None:
    """Block until workers named (or prefixed) by every one of ``names`` have joined."""
    security = client_security(tls) if tls else cluster_security()
    with Client(address, security=security, timeout="30s") as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            have = {str(w.get("name")) for w in client.scheduler_info(n_workers=-1)["workers"].values()}
            if all(any(h == n or h.startswith(f"{n}-") for h in have) for n in names):
                return
            time.sleep(0.3)
    raise TimeoutError(f"workers {sorted(names)} did not join {address} within {timeout}s (have {sorted(have)})")


def profiler_callbacks(dask_worker) -> list[str]:
    """The sampling profiler's periodic callbacks on a worker (``client.run``); it must also be beating."""
    names = list(dask_worker.periodic_callbacks)
    assert "heartbeat" in names, names
    return sorted(name for name in names if name.startswith("profile"))
