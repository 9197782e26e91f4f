"""Remote mode against real processes: a TLS scheduler, a `cah worker` and a GPU-advertising worker."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa
import pytest
from dask_peers import (
    cah_worker,
    client_security,
    dask_worker,
    free_port,
    make_tls,
    profiler_callbacks,
    scheduler,
    wait_for_worker_names,
)
from distributed import Client, get_worker

from cah_assets.partitions import segments
from cah_assets.resources import (
    CandidateRules,
    CommonCrawl,
    ComputeResource,
    DedupIndexResource,
    PageRulesResource,
    StorageResource,
)
from cah_assets.stages.candidates import candidates
from cah_resources.candidates.stage import output_paths
from cah_resources.crawl.segments import register_crawl
from cah_resources.fleet.compute import ClusterUnavailable
from cah_resources.storage import DataRoot


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def cluster(tls, tmp_path_factory):
    """A TLS scheduler with two worker processes: `cah worker` (CPU) and one advertising GPU=1."""
    logs = tmp_path_factory.mktemp("logs")
    with (
        scheduler(tls, logs) as address,
        cah_worker(address, "cpu-box", tls, logs),
        dask_worker(address, "gpu-box", tls, logs, "--resources", "GPU=1"),
    ):
        wait_for_worker_names(address, tls, {"cpu-box", "gpu-box"})
        yield address


def remote(address: str, tls, **overrides) -> ComputeResource:
    return ComputeResource(
        mode="remote",
        scheduler_address=address,
        tls_ca_file=str(tls / "ca.pem"),
        tls_cert_file=str(tls / "client.pem"),
        tls_key_file=str(tls / "client-key.pem"),
        connect_timeout_s=10,
        **overrides,
    )


def worker_name(unit):
    return get_worker().name


def test_cah_workers_run_no_sampling_profiler(cluster, tls):
    """As the local workers: its thread would free resiliparse's HTMLTree off the thread that made it."""
    with Client(cluster, security=client_security(tls), timeout="30s") as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        ours_at = next(a for a, info in workers.items() if str(info["name"]).startswith("cpu-box"))
        plain_at = next(a for a, info in workers.items() if str(info["name"]).startswith("gpu-box"))
        profilers = client.run(profiler_callbacks, workers=[ours_at, plain_at])
    assert profilers[ours_at] == [] and profilers[plain_at]  # a plain `dask worker` runs it


def test_gpu_work_runs_only_on_the_gpu_worker_of_a_remote_cluster(cluster, tls):
    compute = remote(cluster, tls)

    gpu = compute.gpu_resources()
    ran = {r.value for r in compute.run_units(worker_name, range(6), resources=gpu)}

    assert gpu == {"GPU": 1}
    assert ran == {"gpu-box"}


@dataclass(frozen=True)
class RowsUnit:
    root: DataRoot
    index: int
    rows: int
    victim: bool
    marker_dir: str


def write_rows(unit: RowsUnit) -> int:
    """Write a unit's rows; the victim's first attempt waits, with its pid on disk, to be killed."""
    pid_file = os.path.join(unit.marker_dir, "victim.pid")
    if unit.victim and not os.path.exists(pid_file):
        with open(pid_file + ".tmp", "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(pid_file + ".tmp", pid_file)
        time.sleep(300)
    table = pa.table({"unit": [unit.index] * unit.rows, "row": list(range(unit.rows))})
    unit.root.write_parquet(unit.root.path("parts", f"{unit.index:03d}.parquet"), table)
    return unit.rows


def test_a_worker_killed_mid_task_still_yields_every_row_exactly_once(cluster, tls, tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    units = [RowsUnit(root, i, 10 + i, i == 3, str(tmp_path)) for i in range(8)]
    compute = remote(cluster, tls)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(compute.run_units, write_rows, units)
        pid_file = tmp_path / "victim.pid"
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        victim_pid = int(pid_file.read_text())
        os.kill(victim_pid, signal.SIGKILL)
        results = running.result(timeout=240)

    assert [r.unit.index for r in results] == list(range(8))
    assert [r.value for r in results] == [10 + i for i in range(8)]
    rows = []
    for name in root.listdir(root.path("parts")):
        rows += root.read_parquet(root.path("parts", name)).to_pylist()
    assert sorted((r["unit"], r["row"]) for r in rows) == [(i, j) for i in range(8) for j in range(10 + i)]
    with pytest.raises(ProcessLookupError):
        os.kill(victim_pid, 0)
    wait_for_worker_names(cluster, tls, {"cpu-box", "gpu-box"})  # the nanny brought the worker back


def test_a_client_with_another_cas_certificate_is_refused(cluster, tls, tmp_path):
    stranger = make_tls(tmp_path / "stranger")

    with pytest.raises(ClusterUnavailable, match=r"refused us") as error:
        remote(cluster, stranger).has_gpu_workers()
    assert "\n" not in str(error.value)


def test_a_client_without_tls_is_refused(cluster):
    plain = cluster.replace("tls://", "tcp://")
    with pytest.raises(OSError):
        Client(plain, timeout="5s")
    with pytest.raises(ClusterUnavailable, match="refused us"):
        ComputeResource(mode="remote", scheduler_address=plain, connect_timeout_s=5).has_gpu_workers()


def test_a_tls_address_without_a_client_certificate_is_a_one_line_error(cluster, monkeypatch):
    for name in ("CAH_TLS_CA_FILE", "CAH_TLS_CERT_FILE", "CAH_TLS_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(ClusterUnavailable, match="needs TLS but no client certificate is configured"):
        ComputeResource(mode="remote", scheduler_address=cluster).has_gpu_workers()


def test_the_default_resource_goes_remote_with_certificates_from_the_environment(cluster, tls, monkeypatch):
    monkeypatch.setenv("CAH_COMPUTE_MODE", "remote")
    monkeypatch.setenv("CAH_SCHEDULER_ADDRESS", cluster)
    monkeypatch.setenv("CAH_TLS_CA_FILE", str(tls / "ca.pem"))
    monkeypatch.setenv("CAH_TLS_CERT_FILE", (tls / "client.pem").read_text())  # PEM text works too
    monkeypatch.setenv("CAH_TLS_KEY_FILE", str(tls / "client-key.pem"))

    compute = ComputeResource()

    assert compute.has_gpu_workers()
    assert {r.value for r in compute.run_units(worker_name, range(4))} <= {"cpu-box-0", "gpu-box"}


def test_an_unreachable_scheduler_is_a_one_line_error():
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ClusterUnavailable, match=rf"Dask scheduler at {address} is unreachable") as error:
        ComputeResource(mode="remote", scheduler_address=address, connect_timeout_s=2).has_gpu_workers()
    assert "\n" not in str(error.value)


def test_a_partition_materializes_through_dagster_on_the_remote_cluster(cluster, tls, sample_crawl, tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    registration = register_crawl(CommonCrawl(base_url=sample_crawl.root).source(), root, sample_crawl.crawl, 2)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(segments.name, registration.keys())
    key = registration.keys()[0]
    resources = {
        "compute": remote(cluster, tls),
        "common_crawl": CommonCrawl(base_url=sample_crawl.root),
        "storage": StorageResource(root=root.url),
        "candidate_rules": CandidateRules(),
        "page_rules": PageRulesResource(),
        "dedup_index": DedupIndexResource(),
    }

    result = dg.materialize([candidates], partition_key=key, instance=instance, resources=resources)

    assert result.success
    table = root.read_parquet(output_paths(root, key)[0])
    expected = sample_crawl.expected_segment(registration.files_of(key))
    assert sorted((r["url"], r["text"]) for r in table.to_pylist()) == sorted((e.url, e.text) for e in expected)
    metadata = result.asset_materializations_for_node("candidates")[0].metadata
    assert metadata["candidates"].value == len(expected)
    text = " ".join(str(v.value) for v in metadata.values())
    assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text
