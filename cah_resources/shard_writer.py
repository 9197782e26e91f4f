"""One image shard on disk: NNNNN.tar (webdataset), NNNNN.parquet, NNNNN_stats.json and the NNNNN.done marker."""

from __future__ import annotations

import io
import tarfile
import time
from collections import Counter
from contextlib import ExitStack
from typing import Any

import orjson
import pyarrow as pa

from cah_resources.storage import DataRoot

CANDIDATE_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("page_url", pa.string()),
        ("category", pa.string()),
        ("language", pa.string()),
        ("language_prob", pa.float32()),
        ("wat_file", pa.string()),
    ]
)
DOWNLOAD_FIELDS = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("http_status", pa.int32()),
        ("error_message", pa.string()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
    ]
)
# Facts about the stored image; null unless the status is 'ok', whatever the outcome carried.
IMAGE_FACTS = ("bytes", "sha256", "width", "height", "original_width", "original_height")
MAX_SHARD_SIZE = 100_000  # keys give the row within a shard five digits


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def sample_key(shard: int, row_in_shard: int) -> str:
    """The webdataset key of a row: stable across reruns because rows are the sorted candidates'."""
    return f"{shard:05d}{row_in_shard:05d}"


def shard_paths(root: DataRoot, folder: str, shard: int) -> dict[str, str]:
    name = shard_name(shard)
    return {
        "tar": f"{folder}/{name}.tar",
        "parquet": f"{folder}/{name}.parquet",
        "stats": f"{folder}/{name}_stats.json",
        "done": f"{folder}/{name}.done",
    }


def remove_unfinished_files(root: DataRoot, folder: str, shard: int) -> list[str]:
    """Delete what a killed writer of this shard left behind (temporary files, partial outputs).

    A shard without its .done marker is redone whole, so nothing of it is worth keeping.
    """
    name = shard_name(shard)
    removed = []
    for entry in root.listdir(folder):
        if entry.startswith(f"{name}.") or entry.startswith(f"{name}_stats.json"):
            if entry == f"{name}.done":
                continue
            root.remove(f"{folder}/{entry}")
            removed.append(entry)
    return removed


class ShardWriter:
    """Collects a shard's samples as they finish and publishes the shard atomically.

    Samples stream into a temporary tar in completion order (memory stays flat); the parquet,
    the stats and finally the .done marker are written by ``close`` once every row has an outcome.
    Readers that trust only shards with a marker never see a partial shard.
    """

    def __init__(self, root: DataRoot, folder: str, shard: int, rows: int, candidate_schema: pa.Schema) -> None:
        if rows > MAX_SHARD_SIZE:
            raise ValueError(f"a shard holds at most {MAX_SHARD_SIZE} rows (5-digit keys), not {rows}")
        self.root = root
        self.folder = folder
        self.shard = shard
        self.rows = rows
        self.paths = shard_paths(root, folder, shard)
        self.schema = pa.schema(list(candidate_schema) + [f for f in DOWNLOAD_FIELDS if f.name not in candidate_schema.names])
        self._records: list[dict[str, Any] | None] = [None] * rows
        self._stack = ExitStack()
        self._tar: tarfile.TarFile | None = None
        self._tar_bytes = 0
        self._started = time.time()
        self._mtime = int(self._started)

    def __enter__(self) -> ShardWriter:
        handle = self._stack.enter_context(self.root.open_atomic(self.paths["tar"], "wb"))
        # Keys are short ASCII names, so plain ustar headers do; they cost a third of PAX ones to build.
        self._tar = self._stack.enter_context(tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stack.__exit__(exc_type, exc, tb)

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = self._mtime
        info.mode = 0o644
        assert self._tar is not None
        self._tar.addfile(info, io.BytesIO(data))
        self._tar_bytes += len(data)

    def add(self, row: int, candidate: dict[str, Any], outcome: dict[str, Any], jpeg: bytes | None) -> None:
        """Record row ``row`` (0-based within the shard); ``jpeg`` only for status 'ok'."""
        if self._records[row] is not None:
            raise ValueError(f"row {row} of shard {self.shard} was recorded twice")
        ok = outcome.get("status") == "ok"
        if ok and jpeg is None:
            raise ValueError(f"row {row} of shard {self.shard} is 'ok' but has no image")
        record = dict(candidate)
        record["key"] = sample_key(self.shard, row)
        for field in DOWNLOAD_FIELDS.names[1:]:
            record[field] = outcome.get(field) if ok or field not in IMAGE_FACTS else None
        self._records[row] = record
        if ok:
            key = record["key"]
            self._member(f"{key}.jpg", jpeg)
            self._member(f"{key}.txt", (record.get("text") or "").encode("utf-8"))
            self._member(f"{key}.json", orjson.dumps(record, option=orjson.OPT_SORT_KEYS))

    def close(self, **extra: Any) -> dict[str, Any]:
        """Publish tar, parquet, stats and marker (in that order); returns the marker's content.

        ``extra`` facts (the rows' range, network totals) are added to the stats and the marker.
        """
        missing = [i for i, r in enumerate(self._records) if r is None]
        if missing:
            raise RuntimeError(f"shard {self.shard} closed with {len(missing)} rows unrecorded (first: {missing[0]})")
        self._stack.close()  # finishes the tar and renames it into place
        table = pa.Table.from_pylist(self._records, schema=self.schema)
        self.root.write_parquet(self.paths["parquet"], table)
        counts = Counter(r["status"] for r in self._records)
        ok_records = [r for r in self._records if r["status"] == "ok"]
        finished = time.time()
        stats = {
            "shard": self.shard,
            "count": self.rows,
            "successes": counts.get("ok", 0),
            "failed": self.rows - counts.get("ok", 0),
            "status_counts": dict(sorted(counts.items())),
            "bytes_ok_images": sum(r["bytes"] or 0 for r in ok_records),
            "bytes_written": self.root.fs.size(self.paths["tar"]) + self.root.fs.size(self.paths["parquet"]),
            "image_bytes_written": self._tar_bytes,
            "start_time": self._started,
            "end_time": finished,
            "duration": finished - self._started,
            **extra,
        }
        self.root.write_json(self.paths["stats"], stats)
        self.root.write_json(self.paths["done"], stats)
        return stats
