"""A shard task's test inputs: a segment's candidates written as stage 1 writes them, and small settings."""

import pyarrow as pa

from cah_resources.candidates.stage import output_paths, pair_uid
from cah_resources.contract import CANDIDATES_SCHEMA
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
            }
        )
    rows.sort(key=lambda r: r["uid"])
    root.write_parquet(output_paths(root, segment)[0], pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA))
    return rows
