"""The data root on an S3 peer (moto's server through s3fs): atomic writes, crashes, resuming, secrets."""

import os
import subprocess
import sys
import textwrap

import pytest
from s3_peer import ACCESS_KEY, REGION, SECRET_KEY, new_bucket_root, s3_endpoint
from shard_inputs import SEGMENT, SETTINGS, kill_after_first_shard, killed_at_exit, write_candidates

from cah_assets.resources import StorageResource
from cah_resources.image_shards.stage import (
    download_shard,
    plan_shards,
    segment_folder,
)
from cah_resources.samples.local_web import LocalImageWeb
from cah_resources.storage import DataRoot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PART = 5 * 2**20  # S3's smallest multipart part: a write past it starts a multipart upload


@pytest.fixture(scope="session")
def s3_peer():
    """The endpoint of a real S3 peer on loopback (CAH_TEST_S3_ENDPOINT, or a moto server started here)."""
    with s3_endpoint() as endpoint:
        yield endpoint


@pytest.fixture
def s3_root(s3_peer) -> DataRoot:
    """A data root in a fresh bucket, with 5 MiB upload parts so that small tests reach multipart uploads."""
    return new_bucket_root(s3_peer, default_block_size=PART)


def visible(root: DataRoot, path: str) -> dict:
    """What a reader of the store sees of ``path``: listing, existence and HEAD."""
    fs = root.fs
    bucket, key, _ = fs.split_path(path)
    listed = (
        [p for p in fs.ls(path.rsplit("/", 1)[0], detail=False, refresh=True)]
        if fs.exists(path.rsplit("/", 1)[0])
        else []
    )
    try:
        head = fs.call_s3("head_object", Bucket=bucket, Key=key)
    except FileNotFoundError:
        head = None
    return {"listed": [p for p in listed if p.endswith(key)], "exists": fs.exists(path), "head": head}


def uploads_in_progress(root: DataRoot) -> list[str]:
    bucket = root.fs.split_path(root.url)[0]
    return [u["Key"] for u in root.fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])]


@pytest.mark.parametrize("size", [1000, 3 * PART], ids=["one_part", "multipart"])
def test_a_write_that_raises_midway_publishes_nothing(s3_root, size):
    path = s3_root.path("image_shards", "x", "00000.tar")
    with pytest.raises(RuntimeError, match="disk full"), s3_root.open_atomic(path) as handle:
        handle.write(b"x" * size)
        raise RuntimeError("disk full")
    assert visible(s3_root, path) == {"listed": [], "exists": False, "head": None}
    assert uploads_in_progress(s3_root) == []  # the multipart upload was aborted, its parts dropped


def test_a_write_that_raises_keeps_the_object_it_would_have_replaced(s3_root):
    path = s3_root.path("image_shards", "x", "00000_stats.json")
    s3_root.write_json(path, {"count": 1})
    with pytest.raises(RuntimeError), s3_root.open_atomic(path) as handle:
        handle.write(b"{" * (2 * PART))
        raise RuntimeError("worker lost")
    assert s3_root.read_json(path) == {"count": 1}


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from cah_resources.storage import DataRoot
    from s3_peer import peer_options
    root = DataRoot(sys.argv[1], peer_options(sys.argv[2], default_block_size=5 * 2**20))
    with root.open_atomic(sys.argv[3]) as handle:
        handle.write(b"y" * (12 * 2**20))  # two 5 MiB parts go up now; the rest waits for more
        print("parts uploaded", flush=True)
        time.sleep(120)
    """
)


def test_a_writer_killed_mid_multipart_upload_publishes_nothing(s3_root, s3_peer):
    path = s3_root.path("image_shards", "x", "00001.tar")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "tests")])}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, s3_root.url, s3_peer, path], stdout=subprocess.PIPE, text=True, env=env
    )
    with killed_at_exit(process):
        assert process.stdout.readline().strip() == "parts uploaded"
        assert uploads_in_progress(s3_root) == [path.split("/", 3)[3]]  # mid-upload, as we wanted
    assert visible(s3_root, path) == {"listed": [], "exists": False, "head": None}


def test_a_shard_run_killed_midway_resumes_keeping_finished_shards_byte_and_etag_identical(s3_root, s3_peer):
    root = s3_root
    folder = segment_folder(root, SEGMENT)
    with LocalImageWeb(n_hosts=3, latency=(0.15, 0.3), seed=1) as slow_web:
        rows = write_candidates(root, SEGMENT, slow_web.urls({"jpeg": 50, "not_found": 10, "png": 20}))
        aws = {
            "AWS_ENDPOINT_URL_S3": s3_peer,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }
        kill_after_first_shard(root, folder, aws)
        names = root.listdir(folder)
        done_before = sorted(n for n in names if n.endswith(".done"))
        assert 0 < len(done_before) < 4, "the kill should leave unfinished shards behind"
        finished = {
            n: (root.fs.info(f"{folder}/{n}")["ETag"], root.read_bytes(f"{folder}/{n}"))
            for n in names
            if f"{n[:5]}.done" in done_before
        }

        markers = [download_shard(unit, SETTINGS) for unit in plan_shards(root, SEGMENT, SETTINGS.shard_size)]

    assert [m["skipped"] for m in markers] == [f"{m['shard']:05d}.done" in done_before for m in markers]
    assert {n: (root.fs.info(f"{folder}/{n}")["ETag"], root.read_bytes(f"{folder}/{n}")) for n in finished} == finished
    assert sorted(n for n in root.listdir(folder) if n.endswith(".done")) == [f"{i:05d}.done" for i in range(4)]
    out = [r for i in range(4) for r in root.read_parquet(f"{folder}/{i:05d}.parquet", columns=["uid"]).to_pylist()]
    assert [r["uid"] for r in out] == [r["uid"] for r in rows]


def test_the_storage_resource_hands_its_s3_fields_to_the_data_root_without_showing_the_secret(s3_peer):
    secret = "planted-secret-Zq8vX2"
    resource = StorageResource(
        root="s3://bucket/cah", endpoint_url=s3_peer, access_key_id=ACCESS_KEY, secret_access_key=secret, region=REGION
    )
    root = resource.data_root()
    assert root.storage_options == {
        "endpoint_url": s3_peer,
        "key": ACCESS_KEY,
        "secret": secret,
        "client_kwargs": {"region_name": REGION},
    }
    assert secret not in repr(root) and secret not in str(root)


def test_a_local_root_takes_no_s3_options():
    root = StorageResource(root="data", endpoint_url="http://127.0.0.1:1", secret_access_key="s").data_root()
    assert root.storage_options == {} and root.is_local


# --- every stage, check, release and report on the peer ------------------------------------------

PLANTED_SECRET = "planted-secret-Qx7wV3kP"  # moto takes any key; this one must never be seen again
IMAGE_SUFFIXES = (".tar", ".jpg", ".jpeg", ".png", ".webp")


@pytest.fixture(scope="module")
def pipeline_on_s3(s3_peer, tmp_path_factory):
    """One segment of the sample crawl through every stage, its checks, release and report, data root on the peer.

    Stage work runs in Dask worker processes; every path the run process (this one) opens on the
    store is recorded, as are the log records it emits.
    """
    import logging

    import dagster as dg
    import s3fs

    from cah_assets.checks import (
        candidates_checks,
        clip_pairs_checks,
        image_shards_checks,
    )
    from cah_assets.crawls import register_and_add
    from cah_assets.definitions import defs, deployment_resources
    from cah_assets.deployment import Deployment
    from cah_assets.resources import ComputeResource, DedupIndexResource
    from cah_resources.contract import DATASET_ASSETS as DATASET
    from cah_resources.contract import STAGES
    from cah_resources.samples.sample_crawl import generate_crawl

    work = tmp_path_factory.mktemp("pipeline_on_s3")
    bucket_root = new_bucket_root(s3_peer)
    opened: list[str] = []
    original_open = s3fs.S3FileSystem._open

    def recording_open(self, path, mode="rb", *args, **kwargs):
        opened.append(f"{mode} {path}")
        return original_open(self, path, mode, *args, **kwargs)

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    os.environ["CAH_TEST_PLANTED_SECRET"] = PLANTED_SECRET
    s3fs.S3FileSystem._open = recording_open
    try:
        with LocalImageWeb(n_hosts=6, seed=3) as web:
            crawl = generate_crawl(
                str(work / "crawl"),
                wat_files=1,
                pages_per_file=24,
                seed=3,
                mismatch_rate=0.3,
                missing_rate=0.1,
                image_base=web.origins[:4],
                page_base=web.origins[4:],
            )
            resources = {
                **deployment_resources(Deployment("demo", crawl_source=crawl.root, data_root=str(work / "unused"))),
                "storage": StorageResource(
                    root=bucket_root.url,
                    endpoint_url=s3_peer,
                    access_key_id=ACCESS_KEY,
                    secret_access_key=dg.EnvVar("CAH_TEST_PLANTED_SECRET"),
                    region=REGION,
                ),
                "compute": ComputeResource(n_workers=2, processes=True),
                "dedup_index": DedupIndexResource(url=f"sqlite:///{work}/dedup.sqlite"),
            }
            (work / "home").mkdir()
            instance = dg.DagsterInstance.local_temp(str(work / "home"))
            registration, _ = register_and_add(
                instance, resources["common_crawl"], resources["storage"], crawl.crawl, files_per_segment=1
            )
            key = registration.keys()[0]
            stages = [defs.get_assets_def(name) for name in STAGES]
            checks = [candidates_checks, image_shards_checks, clip_pairs_checks]
            stage_run = dg.materialize([*stages, *checks], partition_key=key, instance=instance, resources=resources)
            dataset_run = dg.materialize(
                [defs.get_assets_def(name) for name in DATASET],
                instance=instance,
                resources=resources,
                selection=list(DATASET),
            )
            root = resources["storage"].data_root()
    finally:
        s3fs.S3FileSystem._open = original_open
        logging.getLogger().removeHandler(handler)
        os.environ.pop("CAH_TEST_PLANTED_SECRET", None)
    yield {
        "root": root,
        "key": key,
        "runs": [stage_run, dataset_run],
        "opened": opened,
        "logs": records,
        "instance": instance,
    }
    instance.dispose()


def test_every_stage_check_release_and_report_succeed_with_the_data_root_on_s3(pipeline_on_s3):
    import dagster as dg

    from cah_resources.dataset.release import read_release, release_dir

    stage_run, dataset_run = pipeline_on_s3["runs"]
    assert stage_run.success and dataset_run.success
    evaluations = stage_run.get_asset_check_evaluations()
    assert len(evaluations) == 9 and all(e.passed for e in evaluations), [e.description for e in evaluations]
    root, key = pipeline_on_s3["root"], pipeline_on_s3["key"]
    assert root.url.startswith("s3://")
    folder = segment_folder(root, key)
    assert any(name.endswith(".tar") for name in root.listdir(folder))
    crawl = key.rsplit("_", 1)[0]
    assert read_release(root, release_dir(root, crawl)).num_rows > 0
    assert root.read_bytes(f"{root.path('report', crawl)}/funnel.png").startswith(b"\x89PNG")
    assert pipeline_on_s3["instance"].get_latest_materialization_event(dg.AssetKey("report")) is not None


def test_the_run_process_reads_no_tar_and_no_image_from_the_store(pipeline_on_s3):
    reads = [entry.split(" ", 1)[1] for entry in pipeline_on_s3["opened"] if entry.startswith("rb")]
    assert any(path.endswith(".done") for path in reads)  # it does look at the store, through s3fs
    assert [path for path in reads if path.lower().endswith(IMAGE_SUFFIXES)] == []


def test_the_s3_secret_reaches_no_log_metadata_event_or_repr(pipeline_on_s3):
    root = pipeline_on_s3["root"]
    assert root.storage_options["secret"] == PLANTED_SECRET  # it did travel, to the workers
    seen = [repr(root), str(root), repr(plan_shards(root, pipeline_on_s3["key"], 10)), *pipeline_on_s3["logs"]]
    for run in pipeline_on_s3["runs"]:
        seen.append(repr(run.dagster_run))
        for event in run.all_events:
            seen.append(repr(event))
        for record in pipeline_on_s3["instance"].all_logs(run.run_id):
            seen.append(repr(record))
    assert [text for text in seen if PLANTED_SECRET in text] == []
