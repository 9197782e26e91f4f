"""What mutual TLS costs the compute engine: work units per second through a TLS scheduler vs plain TCP.

    .venv/bin/python benchmarks/compute_tls_bench.py               # 400 units, best of 3 rounds
    .venv/bin/python benchmarks/compute_tls_bench.py --units 100   # quick run

Two schedulers run side by side on loopback, one plain ``tcp://`` (the reference) and one with the
certificates ``deploy/make_tls.sh`` makes, each with two ``cah worker`` processes. The same
``ComputeResource.run_units`` call (small units, the way stages hand out paths) goes to each,
interleaved round by round; the best round counts. The figure is the TLS / TCP throughput ratio
measured in this run: 1.0 means TLS costs nothing per unit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

from cah_assets.resources import ComputeResource  # noqa: E402
from cah_resources.samples.cluster_peers import free_port, stop_process_group, tls_flags  # noqa: E402


def echo(unit: str) -> int:
    return len(unit)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def start_cluster(tls: Path | None, work: Path, workers: int) -> tuple[str, list[subprocess.Popen]]:
    port = free_port()
    sched = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    worker = ["--nworkers", str(workers)]
    if tls:
        sched += ["--protocol", "tls", *tls_flags(tls, "scheduler")]
        worker += tls_flags(tls, "worker")
    address = f"{'tls' if tls else 'tcp'}://127.0.0.1:{port}"
    procs = [_start(sched, work / f"scheduler-{port}.log")]
    time.sleep(3)
    argv = ["--scheduler", address, "--name", f"bench{port}", *worker]
    procs.append(_start([sys.executable, "-m", "cah_assets.cli", "worker", *argv], work / f"worker-{port}.log"))
    return address, procs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cah-tls-bench-") as tmp:
        work = Path(tmp)
        tls = work / "tls"
        subprocess.run(["bash", str(REPO / "deploy" / "make_tls.sh"), str(tls)], check=True, capture_output=True)
        tcp_address, tcp_procs = start_cluster(None, work, args.workers)
        tls_address, tls_procs = start_cluster(tls, work, args.workers)
        contenders = {
            "tcp (reference)": ComputeResource(mode="remote", scheduler_address=tcp_address, task_retries=0),
            "tls": ComputeResource(
                mode="remote",
                scheduler_address=tls_address,
                task_retries=0,
                tls_ca_file=str(tls / "ca.pem"),
                tls_cert_file=str(tls / "client.pem"),
                tls_key_file=str(tls / "client-key.pem"),
            ),
        }
        try:
            for compute in contenders.values():
                with compute.client() as client:
                    client.wait_for_workers(args.workers, timeout=180)
                compute.run_units(echo, ["warm-up"] * 20)
            units = [f"image_shards/CC-MAIN-BENCH_{i:05d}/00000.tar" for i in range(args.units)]
            best = {name: 0.0 for name in contenders}
            for _ in range(args.repeats):
                for name, compute in contenders.items():
                    started = time.perf_counter()
                    compute.run_units(echo, units)
                    best[name] = max(best[name], args.units / (time.perf_counter() - started))
        finally:
            for proc in tls_procs + tcp_procs:
                stop_process_group(proc)
    for name, rate in best.items():
        print(f"{name:<16} {rate:8.1f} units/s (best of {args.repeats}, {args.units} units, {args.workers} workers)")
    print(f"tls / tcp throughput ratio: {best['tls'] / best['tcp (reference)']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
