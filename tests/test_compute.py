"""The compute resource on an in-process Dask cluster: GPU placement, CPU fallback, sizing, warm models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from dask_peers import gpu_executor, profiler_callbacks, scheduler, wait_for_worker_names
from distributed import Client, get_worker
from distributed.system import MEMORY_LIMIT

from cah_assets.cli import main as cah_main
from cah_assets.resources import ComputeResource
from cah_resources.fleet.compute import ClusterUnavailable, worker_resources
from cah_resources.fleet.cuda_devices import (
    GpuDevice,
    count_visible_cuda_devices,
    fit_devices,
    physical_device_id,
    processes_per_device,
)
from cah_resources.fleet.gpu_worker import gpu_worker_options, warm_model
from cah_resources.fleet.settings import GIB


def where(unit):
    return get_worker().name, os.environ.get("CUDA_VISIBLE_DEVICES"), unit


def test_gpu_work_lands_only_on_the_worker_that_advertises_gpu():
    compute = ComputeResource(n_workers=2, local_gpus=1, processes_per_gpu=1)

    ran = [r.value for r in compute.run_units(where, range(8), resources=compute.gpu_resources())]

    assert compute.has_gpu_workers() and compute.gpu_resources() == {"GPU": 1}
    assert {(name, device) for name, device, _ in ran} == {("gpu-0", "0")}
    assert [unit for *_, unit in ran] == list(range(8))


def test_cpu_workers_beside_a_gpu_worker_see_no_device():
    compute = ComputeResource(n_workers=2, local_gpus=1, processes_per_gpu=1)
    with compute.client() as client:
        assert worker_resources(client) == {"gpu-0": {"GPU": 1.0}, "cpu-1": {}}
        devices = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(devices.values()) == ["", "0"]


def test_a_local_gpu_gets_processes_per_gpu_workers_pinned_to_it():
    compute = ComputeResource(n_workers=3, local_gpus=1, processes_per_gpu=2)
    with compute.client() as client:
        assert worker_resources(client) == {"gpu-0-0": {"GPU": 1.0}, "gpu-0-1": {"GPU": 1.0}, "cpu-2": {}}
        devices = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(devices.values()) == ["", "0", "0"]


def test_without_gpu_workers_gpu_work_falls_back_to_cpu():
    compute = ComputeResource(n_workers=2, local_gpus=0, processes=False)

    assert compute.gpu_resources() is None
    ran = compute.run_units(where, range(4), resources={"GPU": 1})

    assert [r.value[2] for r in ran] == [0, 1, 2, 3]


def test_without_gpu_workers_and_no_fallback_the_run_stops_in_one_line():
    compute = ComputeResource(n_workers=1, local_gpus=0, processes=False, allow_cpu_fallback=False)

    with pytest.raises(ClusterUnavailable, match="no worker advertises GPU") as error:
        compute.gpu_resources()
    assert "\n" not in str(error.value)
    with pytest.raises(ClusterUnavailable, match=r"no worker advertises \{'GPU': 1\}.*would wait forever"):
        compute.run_units(where, range(2), resources={"GPU": 1})


def test_local_cluster_is_sized_to_the_machine():
    compute = ComputeResource(local_gpus=0)
    with compute.client() as client:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
    cores = os.cpu_count() or 1
    assert len(workers) == cores
    assert all(w["nthreads"] == 1 for w in workers)
    limits = {w["memory_limit"] for w in workers}
    assert len(limits) == 1
    assert abs(limits.pop() - MEMORY_LIMIT // cores) < GIB


def test_machine_without_nvidia_driver_counts_no_gpu():
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has an NVIDIA driver")
    assert count_visible_cuda_devices() == 0
    assert not ComputeResource().has_gpu_workers()


def load_model(log_dir: str):
    with open(os.path.join(log_dir, f"load-{uuid.uuid4().hex}"), "w"):
        pass
    return {"token": uuid.uuid4().hex}


def use_model(log_dir: str):
    model = warm_model(("clip", "test"), lambda: load_model(log_dir))
    return os.getpid(), model["token"]


def test_a_warm_model_is_loaded_once_per_worker_process(tmp_path):
    compute = ComputeResource(n_workers=1, local_gpus=0)

    ran = [r.value for r in compute.run_units(use_model, [str(tmp_path)] * 5)]

    assert len(set(ran)) == 1
    assert len(list(tmp_path.glob("load-*"))) == 1


def test_devices_with_too_little_free_memory_are_refused_with_the_reason():
    devices = [GpuDevice(0, "RTX 3060", 11 * GIB, 12 * GIB), GpuDevice(1, "GT 1030", 1 * GIB, 2 * GIB)]

    fit, refused = fit_devices(devices, 4 * GIB)

    assert fit == devices[:1]
    assert refused == ["GPU 1 (GT 1030) has 1.0 GiB free, needs 4.0 GiB"]


def test_gpu_executor_runs_one_worker_per_device_pinned_and_advertising_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devices = [GpuDevice(0, "A", 8 * GIB, 8 * GIB), GpuDevice(1, "B", 8 * GIB, 8 * GIB)]

    options = gpu_worker_options(devices, "homepc")

    assert [(o["name"], o["resources"], o["env"], o["nthreads"]) for o in options] == [
        ("homepc-gpu0", {"GPU": 1}, {"CUDA_VISIBLE_DEVICES": "0"}, 1),
        ("homepc-gpu1", {"GPU": 1}, {"CUDA_VISIBLE_DEVICES": "1"}, 1),
    ]
    assert all(abs(o["memory_limit"] - MEMORY_LIMIT // 2) < GIB for o in options)  # the machine's RAM shared by two
    assert physical_device_id(1, visible="2,3") == "3"


def test_gpu_executor_runs_processes_per_gpu_workers_on_each_device_each_advertising_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devices = [GpuDevice(0, "A", 80 * GIB, 80 * GIB), GpuDevice(1, "B", 80 * GIB, 80 * GIB)]

    options = gpu_worker_options(devices, "box", processes={0: 2, 1: 3})

    assert [(o["name"], o["resources"], o["env"]["CUDA_VISIBLE_DEVICES"]) for o in options] == [
        ("box-gpu0-0", {"GPU": 1}, "0"),
        ("box-gpu0-1", {"GPU": 1}, "0"),
        ("box-gpu1-0", {"GPU": 1}, "1"),
        ("box-gpu1-1", {"GPU": 1}, "1"),
        ("box-gpu1-2", {"GPU": 1}, "1"),
    ]
    assert all(abs(o["memory_limit"] - MEMORY_LIMIT // 5) < GIB for o in options)  # the RAM shared by five


def test_a_device_short_of_memory_gets_fewer_processes_and_says_why():
    devices = [GpuDevice(0, "H100", 78 * GIB, 80 * GIB), GpuDevice(1, "RTX 3060", 9 * GIB, 12 * GIB)]

    counts, notes = processes_per_device(devices, 4, 4 * GIB)

    assert counts == {0: 4, 1: 2}
    assert notes == ["GPU 1 (RTX 3060) has 9.0 GiB free: 2 worker process(es), not 4 (4.0 GiB each)"]


def test_cah_worker_gpu_without_cuda_exits_with_one_line(capsys):
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has an NVIDIA driver")

    assert cah_main(["worker", "--scheduler", "tcp://127.0.0.1:9", "--gpu"]) == 2

    err = capsys.readouterr().err.strip()
    assert err.startswith("cah worker: no NVIDIA GPU here") and "\n" not in err


def test_a_killed_run_leaves_no_local_worker_processes_behind(tmp_path):
    # The run forks a child before it dies, as executors and subprocess launchers do; the child keeps
    # Dask's parent-alive pipe open, so only watching the parent process itself ends the workers.
    code = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from cah_assets.resources import ComputeResource\n"
        "with ComputeResource(n_workers=2, local_gpus=0).client() as client:\n"
        "    pids = list(client.run(os.getpid).values())\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        time.sleep(120)\n"
        "        os._exit(0)\n"
        # Written whole, then renamed: the test polls for the name and must not read a half-written file.
        f"    Path({str(tmp_path / 'pids.part')!r}).write_text(' '.join(map(str, [child, *pids])))\n"
        f"    os.replace({str(tmp_path / 'pids.part')!r}, {str(tmp_path / 'pids')!r})\n"
        "    time.sleep(600)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1])
    forked = None
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "pids").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        forked, *workers = [int(p) for p in (tmp_path / "pids").read_text().split()]
        run.kill()
        run.wait()

        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2 and not any(_alive(pid) for pid in workers)
    finally:
        if run.poll() is None:
            run.kill()
        if forked is not None and _alive(forked):
            os.kill(forked, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _worker_address(_unit):
    from distributed import get_worker

    return get_worker().address


def test_a_dagster_run_starts_its_local_cluster_once_for_all_its_steps_and_calls():
    import dagster as dg

    from cah_assets.resources import ComputeResource

    seen: dict[str, set] = {}

    @dg.asset
    def first(compute: ComputeResource):
        seen["first"] = {r.value for r in compute.run_units(_worker_address, range(4))}
        seen["again"] = {r.value for r in compute.run_units(_worker_address, range(4))}

    @dg.asset(deps=[first])
    def second(compute: ComputeResource):
        seen["second"] = {r.value for r in compute.run_units(_worker_address, range(4))}

    compute = ComputeResource(n_workers=2, processes=False)
    assert dg.materialize([first, second], resources={"compute": compute}).success
    assert seen["first"] == seen["again"] == seen["second"]
    # Outside a run, each call has a cluster of its own (nothing keeps it alive afterwards).
    assert {r.value for r in compute.run_units(_worker_address, range(2))}.isdisjoint(seen["first"])


def test_local_worker_processes_run_stage_work_without_loading_dagster():
    # The run process has Dagster loaded; what its workers unpickle (tasks, start-up hooks) must not.
    compute = ComputeResource(n_workers=1, processes=True, local_gpus=0)
    probe = "sorted(m for m in __import__('sys').modules if m.split('.')[0] == 'dagster')"
    assert [r.value for r in compute.run_units(eval, [probe])] == [[]]


def wait_for_peers(unit):
    """A GPU task that records its process and waits (bounded) until ``count`` GPU tasks run at once."""
    folder, count, index = unit
    Path(folder, f"{index}-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while len(list(Path(folder).iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return get_worker().name, os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"), len(list(Path(folder).iterdir()))


def test_cah_worker_gpu_starts_n_processes_per_device_and_dask_runs_n_gpu_tasks_on_it_at_once(tmp_path):
    logs, met = tmp_path / "logs", tmp_path / "met"
    logs.mkdir()
    met.mkdir()
    with scheduler(None, logs) as address, gpu_executor(address, "box", logs, processes_per_gpu=3):
        names = {"box-gpu0-0", "box-gpu0-1", "box-gpu0-2"}
        wait_for_worker_names(address, None, names)
        with Client(address, timeout="30s") as client:
            assert worker_resources(client) == {name: {"GPU": 1.0} for name in names}
            futures = client.map(wait_for_peers, [(str(met), 3, i) for i in range(3)], resources={"GPU": 1})
            ran = client.gather(futures)
    assert {name for name, *_ in ran} == names
    assert len({pid for _, pid, *_ in ran}) == 3
    assert {device for *_, device, _ in ran} == {"0"}
    assert all(seen == 3 for *_, seen in ran)  # all three were running at the same time
    assert "stand-in (GPU 0, 3 process(es))" in (logs / "gpu-executor-box.log").read_text()


def test_local_workers_run_no_sampling_profiler():
    """Its thread would free a task frame's locals, and resiliparse's HTMLTree panics when dropped off its thread."""
    compute = ComputeResource(n_workers=1, processes=True, local_gpus=0)
    with compute.client() as client:
        (first,) = client.run(profiler_callbacks).values()
        client.restart()  # a worker its Nanny starts again (after a crash, a memory limit) too
        (restarted,) = client.run(profiler_callbacks).values()
    assert first == restarted == []
