"""A shard task's test inputs: a segment's candidates written as stage 1 writes them, and small settings."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import psutil
import pyarrow as pa

from cah_resources.candidates.stage import output_paths, pair_uid
from cah_resources.contract import CANDIDATES_SCHEMA, shard_paths
from cah_resources.image_shards.downloader import FetchSettings
from cah_resources.image_shards.resizer import ResizeSettings
from cah_resources.image_shards.stage import ShardSettings
from cah_resources.storage import DataRoot

SEGMENT = "CC-MAIN-TEST_00000"
SETTINGS = ShardSettings(
    fetch=FetchSettings(
        allowed_networks=("127.0.0.0/8",),
        connect_timeout=2,
        read_timeout=1,
        total_timeout=4,
        retries=1,
        retry_backoff=0.05,
        max_body_bytes=2_000_000,
        max_redirects=5,
    ),
    resize=ResizeSettings(resize_mode="center_crop", image_size=64),
    shard_size=20,
)


def write_candidates(root: DataRoot, segment: str, urls) -> list[dict]:
    """A candidates parquet as stage 1 writes it (sorted by uid); returns its rows in order."""
    rows = []
    for i, u in enumerate(urls):
        text = f"Bild {i} — grüne Wiese ☀ {u.kind}"
        rows.append(
            {
                "uid": pair_uid(u.url, text),
                "url": u.url,
                "text": text,
                "page_url": f"http://pages.example/{i}.html",
                "category": "multi",
                "language": "de",
                "language_prob": 0.93,
                "wat_file": "crawl-data/x/0.warc.wat.gz",
                "url_attribute": "src",
            }
        )
    rows.sort(key=lambda r: r["uid"])
    root.write_parquet(output_paths(root, segment)[0], pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA))
    return rows


REPO = str(Path(__file__).resolve().parents[1])
# A shard run in a process of its own, to be killed midway: run with -c, so its image worker
# processes start without re-running a __main__ file. The data root's endpoint and keys, if any,
# come from the AWS variables of its environment.
KILLABLE_RUN = textwrap.dedent(
    """
    import sys
    from cah_resources.image_shards.downloader import FetchSettings
    from cah_resources.image_shards.stage import ShardSettings, download_shard, plan_shards
    from cah_resources.image_shards.resizer import ResizeSettings
    from cah_resources.storage import DataRoot

    root, segment = DataRoot(sys.argv[1]), sys.argv[2]
    settings = ShardSettings(fetch=FetchSettings(**eval(sys.argv[3])), resize=ResizeSettings(**eval(sys.argv[4])),
                             shard_size=int(sys.argv[5]))
    for unit in plan_shards(root, segment, settings.shard_size):
        download_shard(unit, settings)
    """
)


def killable_run_args(root: DataRoot, shard_size: int = SETTINGS.shard_size) -> list[str]:
    """KILLABLE_RUN's arguments for SEGMENT of ``root`` with SETTINGS."""
    return [root.url, SEGMENT, repr(asdict(SETTINGS.fetch)), repr(asdict(SETTINGS.resize)), str(shard_size)]


@contextmanager
def killed_at_exit(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """SIGKILL ``process`` (a run to be cut short, as a crash or an OOM kill would) when the block ends."""
    try:
        yield process
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def kill_after_first_shard(root: DataRoot, folder: str, env: dict[str, str] | None = None) -> list[psutil.Process]:
    """Run KILLABLE_RUN and SIGKILL it once its first shard is finished; returns its child processes then."""
    env = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
    process = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, *killable_run_args(root)], cwd=REPO, env=env)
    with killed_at_exit(process):
        deadline = time.monotonic() + 120
        while not root.exists(shard_paths(folder, 0)["done"]):
            assert process.poll() is None, "the run ended before finishing its first shard"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        children = psutil.Process(process.pid).children(recursive=True)
    return children
