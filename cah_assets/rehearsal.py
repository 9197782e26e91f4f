"""The cluster rehearsal: the whole pipeline on one machine laid out as a fleet sharing only S3, Postgres and TLS.

The coordinator (this process) runs Dagster on a Postgres instance and submits to a Dask scheduler
with mutual TLS; two `cah worker` processes, each in a folder of its own, do the work; the crawl
comes over HTTP, the images from the local web, and every output goes to an S3 peer. The same
crawl then runs through the one-machine demo's resources, and the rehearsal passes when both give
the same candidates, shard statuses and kept pairs, a worker killed mid-shard loses and duplicates
nothing, a client without a certificate is refused, and no worker ever touched the coordinator's folders.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from cah_assets.crawls import register_and_add
from cah_assets.definitions import DATASET_JOB, DEMO_NETWORKS, PIPELINE_JOB, build_definitions
from cah_assets.demo import DEMO_CRAWL, WEB_HOSTS, file_server, generate_demo_crawl
from cah_assets.deployment import Deployment
from cah_assets.launch import run_job
from cah_assets.progress import QUIET_RUN_CONFIG, quiet_console, run_summary
from cah_assets.resources import ClipScorer, ComputeResource, DedupIndexResource, ImageDownloader, StorageResource
from cah_assets.segment_runs import PARTITION_TAG
from cah_resources.candidates.stage import output_paths
from cah_resources.contract import IMAGE_SHARDS, STAGES, kept_folder, report_folder, stage_folder
from cah_resources.dataset.release import read_release, release_dir
from cah_resources.fleet.compute import cluster_security, connect_client
from cah_resources.samples.cluster_peers import (
    POSTGRES,
    FolderWatch,
    Killed,
    kill_worker_mid_task,
    make_tls,
    moto_server,
    postgres_database,
    tls_scheduler,
    unauthenticated_refusals,
    worker_machine,
)
from cah_resources.samples.local_web import LocalImageWeb
from cah_resources.storage import DataRoot, s3_storage_options

WORKERS = 2
# Small shards, so that each segment has several and both workers take some.
SHARD_SIZE = 25
# Seconds the web takes to answer an image request, as a real one does: a shard task lasts long enough
# to be caught mid-way (with an instant web a 25-URL shard ran in about 0.3 s, and the kill could miss).
WEB_LATENCY_S = (0.1, 0.4)
# moto takes any keys; these only have to look like keys (deploy/cah.env sets the real ones).
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "cah-rehearsal-access-key",
    "AWS_SECRET_ACCESS_KEY": "cah-rehearsal-secret-key",
    "AWS_REGION": "eu-central-1",
}
KILLED_TASK = "download_shard"  # image_shards' stage function: the worker running one is killed
MARK = ".cah-rehearsal"  # a folder holding it is the rehearsal's own, emptied by the next one
INSTANCE_YAML = Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml"


@dataclass(frozen=True)
class SegmentOutputs:
    """What must not depend on where a segment ran: sorted uids of candidates, (uid, status) of shard rows,
    kept uids."""

    candidates: list[str]
    shard_rows: list[tuple[str, str]]
    kept: list[str]
    tar_members: list[str]  # every file of every shard tar, sorted: an image written twice shows here


def segment_outputs(root: DataRoot, segment: str) -> SegmentOutputs:
    candidates = root.read_parquet(output_paths(root, segment)[0], columns=["uid"]).column("uid").to_pylist()
    shards, kept = stage_folder(root, IMAGE_SHARDS, segment), kept_folder(root, segment)
    rows: list[tuple[str, str]] = []
    members: list[str] = []
    for name in root.listdir(shards):
        if name.endswith(".parquet"):
            table = root.read_parquet(f"{shards}/{name}", columns=["uid", "status"])
            rows += zip(table.column("uid").to_pylist(), table.column("status").to_pylist(), strict=True)
        elif name.endswith(".tar"):
            with root.fs.open(f"{shards}/{name}", "rb") as handle, tarfile.open(fileobj=handle) as tar:
                members += [f"{name}/{member}" for member in tar.getnames()]
    kept_uids = []
    for name in root.listdir(kept):
        kept_uids += root.read_parquet(f"{kept}/{name}", columns=["uid"]).column("uid").to_pylist()
    return SegmentOutputs(sorted(candidates), sorted(rows), sorted(kept_uids), sorted(members))


@dataclass
class RehearsalResult:
    segment_keys: list[str]
    cluster: dict[str, SegmentOutputs]
    one_machine: dict[str, SegmentOutputs]
    killed: Killed | None
    killed_segment: str
    kill_error: str
    refusals: dict[str, str]
    trespasses: list[str]
    watch_samples: int
    runs: list[tuple[str, str, str, bool]]  # (job, partition, status, re-executable from the UI) of the runs
    instance_storage: str
    release_rows: int
    report_files: list[str]
    seconds: float
    cluster_seconds: float
    one_machine_seconds: float
    # what it started, for a caller to check that it is all gone
    database: str
    bucket: str
    endpoint: str
    worker_pids: list[int]

    def failures(self) -> list[str]:
        """Why the rehearsal does not pass; empty when it does."""
        failed = []
        for key in self.segment_keys:
            ours, theirs = self.cluster.get(key), self.one_machine.get(key)
            for part in ("candidates", "shard_rows", "kept", "tar_members"):
                if ours is None or theirs is None or getattr(ours, part) != getattr(theirs, part):
                    failed.append(f"{key}: {part} differ from the one-machine demo's")
            if ours is not None and len({uid for uid, _ in ours.shard_rows}) != len(ours.shard_rows):
                failed.append(f"{key}: a shard row appears twice")
            if ours is not None and len(set(ours.tar_members)) != len(ours.tar_members):
                failed.append(f"{key}: a file appears twice in a shard tar")
        if self.killed is None:
            failed.append(f"no worker was killed mid-shard ({self.kill_error or 'no shard task seen'})")
        accepted = [what for what, outcome in self.refusals.items() if outcome == "accepted"]
        if accepted or not self.refusals:
            failed.append(f"the scheduler accepted: {', '.join(accepted) or 'nothing was tried'}")
        if self.trespasses:
            failed.append(f"a worker touched the coordinator's folders: {self.trespasses[0]}")
        if not self.watch_samples:
            failed.append("the workers' folders were never watched")
        if self.release_rows == 0:
            failed.append("the release is empty")
        if any(status != "SUCCESS" for _, _, status, _ in self.runs):
            failed.append(f"runs did not all succeed: {self.runs}")
        return failed


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """The coordinator's deploy/cah.env for the duration, the previous environment afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def s3_bucket(endpoint: str) -> Iterator[str]:
    """A fresh bucket on the S3 peer, removed with everything in it afterwards; yields its name."""
    root = DataRoot(
        "s3://",
        s3_storage_options(
            endpoint, S3_KEYS["AWS_ACCESS_KEY_ID"], S3_KEYS["AWS_SECRET_ACCESS_KEY"], S3_KEYS["AWS_REGION"]
        ),
    )
    bucket = f"cah-rehearsal-{uuid.uuid4().hex[:12]}"
    root.fs.mkdir(bucket)
    try:
        yield bucket
    finally:
        root.fs.rm(bucket, recursive=True)


def downloader() -> ImageDownloader:
    return ImageDownloader(allowed_networks=DEMO_NETWORKS, shard_size=SHARD_SIZE)


def _run_segments(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    keys: list[str],
    say: Callable[[str], None],
    label: str,
    during_first: Callable[[], Callable[[], None]] | None = None,
) -> None:
    for i, key in enumerate(keys):
        finish = during_first() if during_first is not None and i == 0 else None
        try:
            result = run_job(instance, defs, PIPELINE_JOB, key, QUIET_RUN_CONFIG)
        finally:
            if finish is not None:
                finish()
        for line in run_summary(result, STAGES):
            say(f"{label} {key} {line}")
        if not result.success:
            raise RuntimeError(f"rehearsal: {label} segment {key} failed in run {result.run_id}")


def run_one_machine(
    crawl_dir: Path, data_dir: Path, web: LocalImageWeb, crawl: str, seed: int, say: Callable[[str], None]
) -> dict[str, SegmentOutputs]:
    """The demo's resources on the same crawl folder and web: local cluster, SQLite dedup, data root on disk.

    Its Dask workers are threads of this process, so CLIP loads once for both segments.
    """
    deployment = Deployment("demo", str(crawl_dir), str(data_dir), seed, list(web.hosts), "")
    defs = build_definitions(
        deployment,
        {
            "compute": ComputeResource(mode="local", n_workers=WORKERS, processes=False),
            "storage": StorageResource(root=str(data_dir)),
            "dedup_index": DedupIndexResource(),
            "image_downloader": downloader(),
        },
    )
    resources = defs.resources or {}
    with dg.DagsterInstance.ephemeral() as instance:
        registration, _ = register_and_add(
            instance, resources["common_crawl"], resources["storage"], crawl, files_per_segment=2
        )
        keys = registration.keys()
        _run_segments(defs, instance, keys, say, "one machine")
    root = StorageResource(root=str(data_dir)).data_root()
    return {key: segment_outputs(root, key) for key in keys}


def _killer(address: str, tls: Path, box: dict) -> Callable[[], Callable[[], None]]:
    """Starts, with the first segment, a thread that kills the worker running one of its shards; returns its join."""

    def start() -> Callable[[], None]:
        security = cluster_security(str(tls / "ca.pem"), str(tls / "client.pem"), str(tls / "client-key.pem"))
        client = connect_client(address, security)
        stop = threading.Event()

        def kill() -> None:
            try:
                box["killed"] = kill_worker_mid_task(client, KILLED_TASK, after_s=0.1, stop=stop)
            except TimeoutError as error:
                box["error"] = str(error)

        thread = threading.Thread(target=kill, name="cah-rehearsal-kill", daemon=True)
        thread.start()

        def finish() -> None:
            stop.set()
            thread.join(timeout=30)
            client.close()

        return finish

    return start


def _wait_for_workers(address: str, tls: Path, count: int, timeout_s: float = 120.0) -> None:
    security = cluster_security(str(tls / "ca.pem"), str(tls / "client.pem"), str(tls / "client-key.pem"))
    with connect_client(address, security) as client:
        client.wait_for_workers(count, timeout=timeout_s)


def run_rehearsal(
    workdir: str,
    crawl: str = DEMO_CRAWL,
    wat_files: int = 4,
    pages_per_file: int = 8,
    seed: int = 0,
    s3_endpoint: str = "",
    say: Callable[[str], None] = print,
) -> RehearsalResult:
    """Everything in the module docstring, under ``workdir`` (emptied first); every process, database and bucket
    it starts is gone when it returns."""
    started = time.perf_counter()
    quiet_console()
    work = Path(workdir).resolve()
    if work.is_dir() and any(work.iterdir()) and not (work / MARK).exists():
        raise RuntimeError(f"{work} is not empty and holds no earlier rehearsal: pick another --workdir")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / MARK).write_text("a cah cluster rehearsal's folder: the next rehearsal empties it\n")
    coordinator, mirror = work / "coordinator", work / "crawl-mirror"
    for folder in (coordinator, mirror):
        folder.mkdir(parents=True)
    with ExitStack() as stack:
        # The shared services first: a missing one is reported before minutes of work.
        database = stack.enter_context(postgres_database())
        endpoint = s3_endpoint or stack.enter_context(moto_server())
        bucket = stack.enter_context(s3_bucket(endpoint))
        web = stack.enter_context(LocalImageWeb(n_hosts=WEB_HOSTS, seed=seed, latency=WEB_LATENCY_S))
        generate_demo_crawl(str(mirror), web, crawl, wat_files, pages_per_file, seed)
        say(f"1/5 generated {wat_files} WAT files of {crawl} in {mirror}; images on a local web of {WEB_HOSTS} hosts")
        one_machine_started = time.perf_counter()
        one_machine = run_one_machine(mirror, coordinator / "one-machine-data", web, crawl, seed, say)
        one_machine_seconds = time.perf_counter() - one_machine_started

        cluster_started = time.perf_counter()
        tls = make_tls(coordinator / "tls")
        address = stack.enter_context(tls_scheduler(tls, coordinator / "scheduler.log"))
        crawl_url = stack.enter_context(file_server(str(mirror)))
        machines = [
            stack.enter_context(worker_machine(address, f"runner-{i}", work / f"runner-{i}", tls))
            for i in range(1, WORKERS + 1)
        ]
        _wait_for_workers(address, tls, WORKERS)
        say(
            f"2/5 cluster up: scheduler {address} (mutual TLS), {WORKERS} `cah worker` runners in "
            f"{', '.join(str(m.folder) for m in machines)}, data root s3://{bucket}/cah on {endpoint}, "
            f"Postgres database {database}, crawl at {crawl_url}"
        )
        refusals = unauthenticated_refusals(address, tls, make_tls(coordinator / "stranger-tls"))
        for what, outcome in refusals.items():
            say(f"3/5 {what}: {'ACCEPTED' if outcome == 'accepted' else 'refused'} ({outcome})")

        home = coordinator / "dagster_home"
        home.mkdir()
        shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
        pg_url = f"postgresql://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{database}"
        # deploy/cah.env's variables, and nothing else, make the default resources those of a fleet.
        stack.enter_context(
            environment(
                {
                    "DAGSTER_HOME": str(home),
                    "DAGSTER_PG_HOST": str(POSTGRES["host"]),
                    "DAGSTER_PG_PORT": str(POSTGRES["port"]),
                    "DAGSTER_PG_DB": database,
                    "DAGSTER_PG_USERNAME": str(POSTGRES["user"]),
                    "DAGSTER_PG_PASSWORD": "",
                    "CAH_COMPUTE_MODE": "remote",
                    "CAH_SCHEDULER_ADDRESS": address,
                    "CAH_TLS_CA_FILE": str(tls / "ca.pem"),
                    "CAH_TLS_CERT_FILE": str(tls / "client.pem"),
                    "CAH_TLS_KEY_FILE": str(tls / "client-key.pem"),
                    "CAH_DATA_ROOT": f"s3://{bucket}/cah",
                    "AWS_ENDPOINT_URL_S3": endpoint,
                    **S3_KEYS,
                    "CAH_DEDUP_URL": pg_url,
                    "CAH_CRAWL_SOURCE": crawl_url,
                }
            )
        )
        watch = stack.enter_context(FolderWatch(machines, [coordinator, mirror]))
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
        # Only what the demo changes for the local web and the offline models; the rest is the fleet's default set.
        defs = build_definitions(Deployment(), {"image_downloader": downloader(), "clip_scorer": ClipScorer.tiny()})
        resources = defs.resources or {}
        storage = resources["storage"]
        registration, _ = register_and_add(instance, resources["common_crawl"], storage, crawl, files_per_segment=2)
        keys = registration.keys()
        box: dict = {}
        _run_segments(defs, instance, keys, say, "4/5 cluster", during_first=_killer(address, tls, box))
        if "killed" in box:
            killed = box["killed"]
            say(f"4/5 killed worker pid {killed.pid} ({killed.worker}) mid-shard ({killed.task}) in {keys[0]}")
        result = run_job(instance, defs, DATASET_JOB, run_config=QUIET_RUN_CONFIG)
        say(f"5/5 {run_summary(result, ('release',))[0]}")
        root = storage.data_root()
        cluster = {key: segment_outputs(root, key) for key in keys}
        release_rows = read_release(root, release_dir(root, crawl)).num_rows if result.success else 0
        report_files = root.listdir(report_folder(root, crawl))
        runs = sorted(
            (r.job_name, r.tags.get(PARTITION_TAG, ""), r.status.value, r.remote_job_origin is not None)
            for r in instance.get_runs()
        )
        storage_kind = type(instance.run_storage).__name__
        worker_pids = sorted({pid for machine in machines for pid in machine.pids()})
        cluster_seconds = time.perf_counter() - cluster_started
    return RehearsalResult(
        segment_keys=keys,
        cluster=cluster,
        one_machine=one_machine,
        killed=box.get("killed"),
        killed_segment=keys[0],
        kill_error=box.get("error", ""),
        refusals=refusals,
        trespasses=watch.seen,
        watch_samples=watch.samples,
        runs=runs,
        instance_storage=storage_kind,
        release_rows=release_rows,
        report_files=report_files,
        seconds=time.perf_counter() - started,
        cluster_seconds=cluster_seconds,
        one_machine_seconds=one_machine_seconds,
        database=database,
        bucket=bucket,
        endpoint=endpoint,
        worker_pids=worker_pids,
    )


def describe(outcome: RehearsalResult) -> list[str]:
    """The verdict in a few lines: what matched, what was killed, what was refused, how long it took."""
    rows: Counter[str] = Counter()
    for outputs in outcome.cluster.values():
        rows["candidates"] += len(outputs.candidates)
        rows["shard rows"] += len(outputs.shard_rows)
        rows["kept"] += len(outputs.kept)
    lines = [
        f"{len(outcome.segment_keys)} segments on the cluster: {', '.join(f'{v} {k}' for k, v in rows.items())}; "
        f"release {outcome.release_rows} rows; instance on {outcome.instance_storage}",
        f"{outcome.watch_samples} samples of the workers' processes, {len(outcome.trespasses)} touching the "
        "coordinator's folders",
        f"took {outcome.seconds:.0f} s (one machine {outcome.one_machine_seconds:.0f} s, "
        f"cluster {outcome.cluster_seconds:.0f} s)",
    ]
    failures = outcome.failures()
    lines.append(
        "rehearsal passed: same outputs as one machine, a killed worker lost nothing, strangers refused"
        if not failures
        else "rehearsal FAILED: " + "; ".join(failures)
    )
    return lines


def run_rehearsal_command(workdir: str, crawl: str = DEMO_CRAWL, wat_files: int = 4, seed: int = 0) -> int:
    """`cah demo --cluster`: the rehearsal with its steps and verdict on the terminal; 0 when it passes."""
    outcome = run_rehearsal(workdir, crawl=crawl, wat_files=wat_files, seed=seed)
    lines = describe(outcome)
    for line in lines:
        print(line)
    print(f"the workers' folders and logs: {Path(workdir).resolve()}/runner-*; the scheduler's: coordinator/")
    return 0 if not outcome.failures() else 1
