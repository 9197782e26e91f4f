"""The image_shards stage function against the local image web: every row's status, the shard files, resuming."""

import asyncio
import hashlib
import io
import json
import multiprocessing
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import psutil
import pyarrow as pa
import pytest
import webdataset as wds
from hostile_peers import RawServer, read_request, response_head
from PIL import Image
from shard_inputs import KILLABLE_RUN, SEGMENT, SETTINGS, kill_after_first_shard, killable_run_args, write_candidates
from stops import files_under, stopped_on_open

from cah_resources.candidates.stage import output_paths
from cah_resources.contract import CANDIDATES_SCHEMA as SCHEMA
from cah_resources.contract import shard_paths, shard_row_schema
from cah_resources.image_shards.image_pool import ImageWorkers
from cah_resources.image_shards.resizer import process_image
from cah_resources.image_shards.shard_writer import ustar_member
from cah_resources.image_shards.stage import (
    BodyBacklog,
    ShardSettings,
    download_shard,
    plan_shards,
    read_marker,
    segment_folder,
)
from cah_resources.samples.local_web import EXPECTED_STATUS, LocalImageWeb, LocalUrl
from cah_resources.storage import TEMPORARY, DataRoot
from tests.hostile_images import (
    BodiesWeb,
    jpeg_with_bogus_exif_tags,
    progressive_jpeg_with_repeated_scans,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shard_files(root: DataRoot, segment: str) -> dict[str, bytes]:
    folder = segment_folder(root, segment)
    return {name: root.read_bytes(f"{folder}/{name}") for name in root.listdir(folder)}


@pytest.fixture(scope="module")
def web():
    with LocalImageWeb(n_hosts=6) as fake_web:
        yield fake_web


@pytest.fixture(scope="module")
def downloaded(web, tmp_path_factory):
    """Two URLs of every kind of the fake web, downloaded once into 20-row shards."""
    root = DataRoot(str(tmp_path_factory.mktemp("shards") / "data"))
    urls = web.urls({kind: 2 for kind in EXPECTED_STATUS})
    rows = write_candidates(root, SEGMENT, urls)
    units = plan_shards(root, SEGMENT, SETTINGS.shard_size)
    markers = [download_shard(unit, SETTINGS) for unit in units]
    expected = {u.url: u.expected_status for u in urls}
    return root, rows, units, markers, expected


def all_rows(root: DataRoot, segment: str) -> list[dict]:
    folder = segment_folder(root, segment)
    parquets = [n for n in root.listdir(folder) if n.endswith(".parquet")]
    return [row for name in parquets for row in root.read_parquet(f"{folder}/{name}").to_pylist()]


def test_every_row_gets_the_status_its_url_must_have(downloaded):
    root, rows, _, _, expected = downloaded
    out = all_rows(root, SEGMENT)
    wrong = [
        (r["url"], r["status"], expected[r["url"]], r["error_message"])
        for r in out
        if r["status"] != expected[r["url"]]
    ]
    assert wrong == []
    assert len(out) == len(rows) == 2 * len(EXPECTED_STATUS)


def test_rows_keep_candidate_order_and_get_stable_keys(downloaded):
    root, rows, units, _, _ = downloaded
    out = all_rows(root, SEGMENT)
    assert [r["uid"] for r in out] == [r["uid"] for r in rows]
    assert [r["key"] for r in out] == [f"{i // 20:05d}{i % 20:05d}" for i in range(len(rows))]
    assert len(units) == 4 and [u.stop - u.start for u in units] == [20, 20, 20, 6]


def test_parquet_has_the_candidate_fields_and_image_facts_only_for_ok_rows(downloaded):
    root, _rows, _, _, _ = downloaded
    table = root.read_parquet(f"{segment_folder(root, SEGMENT)}/00000.parquet")
    # The contract's columns and types: the candidate's, then the download's.
    assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in shard_row_schema()]
    facts = ["bytes", "sha256", "width", "height", "original_width", "original_height"]
    for row in all_rows(root, SEGMENT):
        if row["status"] == "ok":
            assert all(row[f] is not None for f in facts) and row["error_message"] is None
            assert (row["width"], row["height"]) == (64, 64) and row["http_status"] == 200
        else:
            assert all(row[f] is None for f in facts)
            assert row["error_message"] and "\n" not in row["error_message"]
        if row["status"].startswith("http_"):
            assert row["http_status"] == int(row["status"][5:])


def test_stats_and_markers_count_every_status(downloaded):
    root, _, units, markers, _ = downloaded
    folder = segment_folder(root, SEGMENT)
    for unit, marker in zip(units, markers, strict=False):
        statuses = [r["status"] for r in root.read_parquet(f"{folder}/{unit.shard:05d}.parquet").to_pylist()]
        stats = root.read_json(f"{folder}/{unit.shard:05d}_stats.json")
        assert stats["count"] == len(statuses) == unit.stop - unit.start
        assert stats["status_counts"] == {s: statuses.count(s) for s in set(statuses)}
        assert stats["successes"] == statuses.count("ok")
        assert root.read_json(f"{folder}/{unit.shard:05d}.done") == stats
        assert marker["skipped"] is False


def test_shards_read_back_with_webdataset(downloaded):
    root, _rows, _, _, _ = downloaded
    folder = segment_folder(root, SEGMENT)
    ok = {r["key"]: r for r in all_rows(root, SEGMENT) if r["status"] == "ok"}
    tars = sorted(f"{folder}/{n}" for n in root.listdir(folder) if n.endswith(".tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(ok)
    for sample in samples:
        row = ok[sample["__key__"]]
        assert sample["txt"].decode("utf-8") == row["text"]
        meta = json.loads(sample["json"])
        assert meta == {k: row[k] for k in meta} and meta["key"] == sample["__key__"] and meta["status"] == "ok"
        assert set(meta) == set(row)
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and image.size == (64, 64)


def test_shards_read_back_with_plain_tarfile(downloaded):
    root, _, units, _, _ = downloaded
    folder = segment_folder(root, SEGMENT)
    for unit in units:
        ok_keys = [
            r["key"] for r in root.read_parquet(f"{folder}/{unit.shard:05d}.parquet").to_pylist() if r["status"] == "ok"
        ]
        with tarfile.open(f"{folder}/{unit.shard:05d}.tar") as tar:
            names = tar.getnames()
        assert sorted(names) == sorted(f"{k}.{ext}" for k in ok_keys for ext in ("jpg", "txt", "json"))
        # webdataset needs a sample's files next to each other
        stems = [n.split(".")[0] for n in names]
        assert all(stems[i] == stems[i + 1] == stems[i + 2] for i in range(0, len(stems), 3))


def test_tar_members_are_byte_for_byte_what_tarfile_writes(tmp_path):
    members = [
        ("0000000000.jpg", bytes(range(256)) * 5),
        ("0000000000.txt", "grün ☀".encode()),
        ("0000000000.json", b"{}"),
    ]
    reference = tmp_path / "reference.tar"
    with tarfile.open(reference, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    ours = b"".join(ustar_member(name, data, 1_700_000_000) for name, data in members)
    assert reference.read_bytes()[: len(ours)] == ours
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        ustar_member("x" * 101, b"", 0)


def test_a_finished_shard_is_not_redone(downloaded, web):
    root, _, units, _, _ = downloaded
    before = shard_files(root, SEGMENT)
    web.reset_counters()
    markers = [download_shard(unit, SETTINGS) for unit in units]
    assert all(m["skipped"] for m in markers)
    assert sum(web.requests.values()) == 0
    assert shard_files(root, SEGMENT) == before


def test_a_redo_keeps_the_finished_shard_whole_and_marked_until_its_new_files_replace_it(web, tmp_path):
    """A redo run stopped part way (Ctrl-C, Terminate) must not leave the segment a shard short."""
    root = DataRoot(str(tmp_path / "data"))
    folder = segment_folder(root, SEGMENT)
    write_candidates(root, SEGMENT, [LocalUrl(web.url("jpeg", i), "jpeg", "ok") for i in range(6)])
    (unit,) = plan_shards(root, SEGMENT, 10)
    first = download_shard(unit, SETTINGS)
    before = files_under(folder)

    with stopped_on_open(f"{folder}/00000.tar{TEMPORARY}*"):  # its new tar was about to be written
        download_shard(unit, SETTINGS, redo=True)

    assert files_under(folder) == before  # nothing removed, nothing left behind
    assert read_marker(unit) == {k: v for k, v in first.items() if k != "skipped"}
    again = download_shard(unit, SETTINGS, redo=True)
    assert not again["skipped"] and again["end_time"] > first["end_time"]
    assert read_marker(unit) == {k: v for k, v in again.items() if k != "skipped"}
    assert again["status_counts"] == {"ok": 6} and not [n for n in root.listdir(folder) if TEMPORARY in n]


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_marker_whose_tar_was_lost_is_redone_on_the_next_run(web, tmp_path, damage):
    root = DataRoot(str(tmp_path / "data"))
    write_candidates(root, SEGMENT, [LocalUrl(web.url("jpeg", i), "jpeg", "ok") for i in range(4)])
    (unit,) = plan_shards(root, SEGMENT, 10)
    first = download_shard(unit, SETTINGS)
    tar = shard_paths(segment_folder(root, SEGMENT), 0)["tar"]
    if damage == "deleted":
        root.remove(tar)
    else:
        root.write_bytes(tar, root.read_bytes(tar)[:1000])
    again = download_shard(unit, SETTINGS)
    assert not again["skipped"] and first["file_sizes"]["tar"] > 1000
    assert root.fs.size(tar) == again["file_sizes"]["tar"] and again["status_counts"] == {"ok": 4}
    assert download_shard(unit, SETTINGS)["skipped"]


def test_two_runs_of_one_shard_at_once_both_finish_and_the_last_to_publish_wins(web, tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    folder = segment_folder(root, SEGMENT)
    urls = [LocalUrl(web.url("jpeg", i), "jpeg", "ok") for i in range(4)] + [LocalUrl(web.url("hang", 0), "hang", "")]
    write_candidates(root, SEGMENT, urls)
    (unit,) = plan_shards(root, SEGMENT, 10)
    outcomes = {}

    def run(name):
        try:
            outcomes[name] = download_shard(unit, SETTINGS)
        except Exception as error:  # what the test is about: neither run may die
            outcomes[name] = error

    first = threading.Thread(target=run, args=("first",))
    first.start()
    for _ in range(200):
        if any(".tmp-" in n for n in root.listdir(folder)):
            break
        time.sleep(0.05)
    run("second")  # starts while the first writes its temporary tar
    first.join(timeout=120)
    assert all(isinstance(o, dict) for o in outcomes.values()), outcomes
    marker = read_marker(unit)
    assert marker is not None and marker["count"] == 5
    assert not [n for n in root.listdir(folder) if ".tmp-" in n]


def test_a_shard_written_with_another_shard_size_is_a_one_line_error(downloaded):
    root, _, _, _, _ = downloaded
    unit = plan_shards(root, SEGMENT, 25)[1]
    with pytest.raises(ValueError, match="written with another shard_size") as info:
        download_shard(unit, SETTINGS)
    assert "\n" not in str(info.value)


def image_worker_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]


def test_a_shard_survives_an_image_worker_killed_by_the_os(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    with LocalImageWeb(n_hosts=2, latency=(0.1, 0.3), seed=2) as slow_web:
        write_candidates(root, SEGMENT, slow_web.urls({"jpeg": 12, "png": 6, "webp": 6}))
        units = plan_shards(root, SEGMENT, SETTINGS.shard_size)
        shard = threading.Thread(target=lambda: [download_shard(unit, SETTINGS) for unit in units])
        shard.start()
        deadline = time.monotonic() + 60
        while not image_worker_processes() and shard.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        workers = image_worker_processes()
        assert workers, "the shard ended before its image worker could be killed"
        workers[0].kill()  # as the OOM killer would
        shard.join(timeout=120)
    assert not shard.is_alive()
    assert [r["status"] for r in all_rows(root, SEGMENT)] == ["ok"] * 24


def test_missing_candidates_are_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize the candidates of CC-MAIN-NONE_00000 first"):
        plan_shards(DataRoot(str(tmp_path)), "CC-MAIN-NONE_00000", 10)


def test_a_candidates_parquet_without_uid_is_a_one_line_error(web, tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    write_candidates(root, SEGMENT, [LocalUrl(web.url("jpeg", 0), "jpeg", "ok")])
    path = output_paths(root, SEGMENT)[0]
    root.write_parquet(path, root.read_parquet(path).drop(["uid"]))
    with pytest.raises(ValueError, match="has no uid column: it is not a candidates parquet") as error:
        for unit in plan_shards(root, SEGMENT, 10):
            download_shard(unit, SETTINGS)
    assert "\n" not in str(error.value) and "rematerialize the candidates of" in str(error.value)


def test_a_run_killed_mid_segment_resumes_keeping_its_finished_shards(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    with LocalImageWeb(n_hosts=3, latency=(0.15, 0.3), seed=1) as slow_web:
        rows = write_candidates(root, SEGMENT, slow_web.urls({"jpeg": 50, "not_found": 10, "png": 20}))
        folder = segment_folder(root, SEGMENT)
        image_workers = kill_after_first_shard(root, folder)
        # The killed run's image worker processes leave with it rather than lingering as orphans.
        _gone, alive = psutil.wait_procs(image_workers, timeout=20)
        assert image_workers and alive == []
        done_before = sorted(n for n in root.listdir(folder) if n.endswith(".done"))
        finished = {n: root.read_bytes(f"{folder}/{n}") for n in root.listdir(folder) if f"{n[:5]}.done" in done_before}
        assert 0 < len(done_before) < 4, "the kill should leave unfinished shards behind"

        markers = [download_shard(unit, SETTINGS) for unit in plan_shards(root, SEGMENT, SETTINGS.shard_size)]

    assert [m["skipped"] for m in markers] == [f"{m['shard']:05d}.done" in done_before for m in markers]
    assert {n: root.read_bytes(f"{folder}/{n}") for n in finished} == finished
    names = root.listdir(folder)
    assert not [n for n in names if ".tmp-" in n]
    assert sorted(n for n in names if n.endswith(".done")) == [f"{i:05d}.done" for i in range(4)]
    out = all_rows(root, SEGMENT)
    assert [r["uid"] for r in out] == [r["uid"] for r in rows]
    assert {r["status"] for r in out} == {"ok", "http_404"}
    digests = {hashlib.sha256(root.read_bytes(f"{folder}/{i:05d}.tar")).hexdigest() for i in range(4)}
    assert len(digests) == 4


# What a process holds decides what it costs to start: spawned image workers and Dask workers pay
# every import of the modules they unpickle (Dagster alone is over a CPU second per process).
HEAVY = ("dagster", "aiohttp", "pyarrow", "torch", "distributed")


def test_image_worker_processes_load_pillow_and_nothing_heavier():
    with ImageWorkers(SETTINGS.image_processes) as workers:
        pool = workers.executor
        assert (
            pool.submit(process_image, b"not an image at all" * 400, SETTINGS.resize).result().status == "not_an_image"
        )
        modules = f"sorted({{m.split('.')[0] for m in __import__('sys').modules}} & {set(HEAVY)!r})"
        loaded = pool.submit(eval, modules).result()
    assert loaded == []


def test_stage_worker_modules_import_without_dagster():
    code = (
        "import sys, cah_resources.candidates.stage, cah_resources.image_shards.stage, cah_resources.clip_pairs.stage; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_new_downloads_wait_while_the_bodies_waiting_for_image_work_fill_the_backlog():
    async def scenario() -> list[str]:
        backlog, seen = BodyBacklog(limit=100, first_guess=30), []
        first = await backlog.claim()
        first.body_arrived(60)  # 60 of 100 held: a download expected at 60 no longer fits
        async with first:

            async def download() -> None:
                await backlog.claim()
                seen.append("download started")

            waiting = asyncio.create_task(download())
            await asyncio.sleep(0.05)
            seen.append("image done")
        await asyncio.wait_for(waiting, 5)
        return seen

    assert asyncio.run(scenario()) == ["image done", "download started"]


def test_a_body_larger_than_the_backlog_still_goes_through_alone():
    async def scenario() -> int:
        backlog = BodyBacklog(limit=10)
        async with await backlog.claim() as claim:
            claim.body_arrived(1_000)
        async with await backlog.claim():
            return backlog.claimed

    assert asyncio.run(scenario()) == 1_000  # claimed at the mean body size seen so far


def test_images_checked_at_once_go_in_batches_and_each_gets_its_own_outcome(web):
    bodies = [web.body(kind, n) for n in range(8) for kind in ("jpeg", "png", "webp")] + [b"not an image" * 900]
    expected = [process_image(body, SETTINGS.resize) for body in bodies]

    async def scenario(workers: ImageWorkers):
        return await asyncio.gather(*(workers.check(body, SETTINGS.resize) for body in bodies))

    with ImageWorkers(SETTINGS.image_processes) as workers:
        sent = []
        real = workers._run_batch

        async def counted(batch, settings):
            sent.append(len(batch))
            await real(batch, settings)

        workers._run_batch = counted
        outcomes = asyncio.run(scenario(workers))
    assert outcomes == expected
    assert sum(sent) == len(bodies) and max(sent) > 1  # fewer hand-offs than images


def test_image_workers_run_below_the_priority_of_the_process_that_downloads():
    with ImageWorkers(SETTINGS.image_processes) as workers:
        assert workers.executor.submit(os.nice, 0).result() > os.nice(0)


def test_an_image_past_its_cpu_budget_gets_decode_timeout_and_the_rest_of_the_shard_goes_on(web, tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    # The scan check is off so that the budget is what stops this image (about 0.6 CPU s to decode).
    settings = replace(SETTINGS, resize=replace(SETTINGS.resize, max_scan_pixels=0, max_decode_cpu_seconds=0.15))
    with BodiesWeb({"/slow.jpg": progressive_jpeg_with_repeated_scans(2400, 5000)}) as hostile:
        urls = [*web.urls({"jpeg": 8, "png": 4}), LocalUrl(hostile.url("/slow.jpg"), "slow", "decode_timeout")]
        write_candidates(root, SEGMENT, urls)
        markers = [download_shard(unit, settings) for unit in plan_shards(root, SEGMENT, settings.shard_size)]
    expected = {u.url: u.expected_status for u in urls}
    assert {r["url"]: r["status"] for r in all_rows(root, SEGMENT)} == expected
    assert markers[0]["status_counts"] == {"ok": 12, "decode_timeout": 1}


def test_download_shard_in_a_process_pool_worker_lets_that_worker_exit(web, tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    write_candidates(root, SEGMENT, web.urls({"jpeg": 4, "png": 2}))
    executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    worker = psutil.Process(executor.submit(os.getpid).result(timeout=60))
    leftovers = [worker]
    try:
        marker = executor.submit(download_shard, plan_shards(root, SEGMENT, 20)[0], SETTINGS).result(timeout=120)
        assert marker["successes"] == 6
        leftovers += worker.children(recursive=True)
        closing = threading.Thread(target=executor.shutdown)
        closing.start()
        closing.join(timeout=30)  # a worker's exit waits for its children: image workers left up block it
        assert not closing.is_alive(), "the executor's worker did not exit: download_shard left processes behind"
    finally:
        for process in leftovers:
            if process.is_running():
                process.kill()


def test_changed_candidates_redo_their_shard_and_unchanged_ones_are_kept_byte_for_byte(web, tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    rows = write_candidates(root, SEGMENT, web.urls({"jpeg": 30, "png": 10}))
    for unit in plan_shards(root, SEGMENT, SETTINGS.shard_size):
        download_shard(unit, SETTINGS)
    folder = segment_folder(root, SEGMENT)
    first = {n: root.read_bytes(f"{folder}/{n}") for n in root.listdir(folder) if n.startswith("00000")}
    # The second shard's 20 rows become other candidates that still sort after the first shard's.
    others = [
        row
        for row in write_candidates(root, "CC-MAIN-OTHER_00000", web.urls({"webp": 100}))
        if row["uid"] > rows[19]["uid"]
    ][:20]
    new_rows = rows[:20] + others
    root.write_parquet(output_paths(root, SEGMENT)[0], pa.Table.from_pylist(new_rows, schema=SCHEMA))

    markers = [download_shard(unit, SETTINGS) for unit in plan_shards(root, SEGMENT, SETTINGS.shard_size)]

    assert [m["skipped"] for m in markers] == [True, False]
    assert {n: root.read_bytes(f"{folder}/{n}") for n in first} == first
    assert [r["uid"] for r in all_rows(root, SEGMENT)] == [r["uid"] for r in new_rows]


SUM_WARNINGS = "\nimport json\nprint(sum(json.load(open(path))['image_warnings'] for path in sys.argv[6:]))\n"


def test_an_image_full_of_bogus_exif_tags_prints_no_warnings_and_is_counted(web, tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    with BodiesWeb({"/exif.jpg": jpeg_with_bogus_exif_tags(5400)}) as hostile:
        write_candidates(root, SEGMENT, [*web.urls({"jpeg": 2}), LocalUrl(hostile.url("/exif.jpg"), "exif", "ok")])
        stats = f"{segment_folder(root, SEGMENT)}/00000_stats.json"
        args = [*killable_run_args(root, shard_size=20), stats]
        env = {**os.environ, "PYTHONPATH": REPO}
        done = subprocess.run(
            [sys.executable, "-c", KILLABLE_RUN + SUM_WARNINGS, *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.splitlines() == []  # the run's and its image worker's, which writes to the same stderr
    assert int(done.stdout.split()[-1]) > 5000
    assert [r["status"] for r in all_rows(root, SEGMENT)] == ["ok"] * 3


BIG_BODY = 19_000_000
# Peak RSS from the kernel's high-water mark, reset first (ru_maxrss would count the forked parent).
RSS_CHILD = textwrap.dedent("""
    import json, sys
    import psutil
    from cah_resources.image_shards.stage import ShardSettings, download_shard, plan_shards
    from cah_resources.storage import DataRoot
    from cah_resources.image_shards.downloader import FetchSettings
    settings = ShardSettings(
        fetch=FetchSettings(allowed_networks=("127.0.0.0/8",), concurrency=64, per_host_connections=64,
                            connect_timeout=5, read_timeout=20, total_timeout=120, max_body_bytes=20_000_000,
                            honour_robots_txt=False, honour_tdmrep=False),  # this peer serves bodies only
        image_backlog_bytes=int(sys.argv[2]), shard_size=1000)
    (unit,) = plan_shards(DataRoot(sys.argv[1]), "CC-MAIN-TEST_00000", settings.shard_size)
    with open("/proc/self/clear_refs", "w") as reset:
        reset.write("5")
    before = psutil.Process().memory_info().rss
    marker = download_shard(unit, settings)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"growth": peak - before, "statuses": marker["status_counts"]}))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="reads Linux's peak RSS")
def test_bodies_still_downloading_count_against_the_backlog(tmp_path):
    body = os.urandom(BIG_BODY)

    async def big_bodies(reader, writer):  # even paths say Content-Length, odd ones end at close
        while (line := await read_request(reader)) is not None:
            declared = int(line.split()[1].strip("/").split(".")[0]) % 2 == 0
            headers = {"Content_Length": len(body)} if declared else {"Connection": "close"}
            writer.write(response_head(Content_Type="image/jpeg", **headers) + body)
            await writer.drain()
            if not declared:
                return

    backlog = 32_000_000
    with RawServer(big_bodies) as server:
        root = DataRoot(str(tmp_path / "data"))
        urls = [LocalUrl(server.url(f"/{n}.jpg"), "big", "not_an_image") for n in range(40)]
        write_candidates(root, SEGMENT, urls)
        done = subprocess.run(
            [sys.executable, "-c", RSS_CHILD, root.url, str(backlog)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["statuses"] == {"not_an_image": 40}
    # The bound README.md states (Stage 2): backlog + (image_processes + 3) bodies of max_body_bytes
    # + 64 MB + 0.5 MB per connection; here 208 MB, where 40 bodies at once were 760 MB (1.16 GB of RSS).
    settings = ShardSettings()
    bound = backlog + (settings.image_processes + 3) * 20_000_000 + 64_000_000 + 64 * 500_000
    assert result["growth"] <= bound, result


def test_when_every_download_waits_to_grow_the_first_grows_alone_past_the_backlog():
    async def scenario() -> list[str]:
        backlog, seen = BodyBacklog(limit=100, first_guess=10), []
        first, second = await backlog.claim(), await backlog.claim()
        await first.reserve(60)
        await second.reserve(40)  # 100 of 100 held by two bodies still downloading

        async def grow(name: str, claim, total: int) -> None:
            await claim.reserve(total)
            seen.append(f"{name} grew")
            claim.body_arrived(total)

        async with first, second:
            growing = [asyncio.create_task(grow("first", first, 90)), asyncio.create_task(grow("second", second, 50))]
            await asyncio.sleep(0.05)
            assert seen == ["first grew"]  # nothing else could free room: it goes on alone
            first.body_arrived(90)
            await first.__aexit__(None, None, None)  # its image is done
            await asyncio.wait_for(asyncio.gather(*growing), 5)
        return seen

    assert asyncio.run(scenario()) == ["first grew", "second grew"]


@pytest.mark.parametrize("overlap", [True, False])
def test_the_next_shard_starts_while_a_shard_waits_on_a_hanging_host_and_both_finish(web, tmp_path, overlap):
    from cah_assets.resources import ComputeResource

    root = DataRoot(str(tmp_path / "data"))
    jpegs = [LocalUrl(web.url("jpeg", i), "jpeg", "ok") for i in range(15)]
    # The hang must sort into the first shard (rows are sorted by uid): it holds that shard's tail.
    for variant in range(50):
        hang = LocalUrl(web.url("hang", variant), "hang", "timeout")
        rows = write_candidates(root, SEGMENT, [*jpegs, hang])
        if hang.url in {r["url"] for r in rows[:8]}:
            break
    else:
        pytest.fail("no hanging URL sorted into the first shard")
    fetch = replace(SETTINGS.fetch, concurrency=4, read_timeout=3)  # a hang is a 3 s wait with nothing to do
    settings = replace(SETTINGS, shard_size=8, fetch=fetch, overlap_tails=overlap)
    units = plan_shards(root, SEGMENT, settings.shard_size)
    compute = ComputeResource(n_workers=1, threads_per_worker=1, processes=False, local_gpus=0)
    first, second = (r.value for r in compute.run_units(download_shard, units, settings=settings))

    assert first["end_time"] - first["start_time"] >= fetch.read_timeout
    # With the tail handed off, the second shard runs inside the first one's wait; without, after it.
    assert (second["start_time"] < first["end_time"] - 1) is overlap
    assert first["status_counts"] == {"ok": 7, "timeout": 1} and second["status_counts"] == {"ok": 8}
    assert [r["uid"] for r in all_rows(root, SEGMENT)] == [r["uid"] for r in rows]
