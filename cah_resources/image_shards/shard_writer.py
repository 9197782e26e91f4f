"""One image shard on disk: NNNNN.tar (webdataset), NNNNN.parquet, NNNNN_stats.json and the NNNNN.done marker."""

from __future__ import annotations

import hashlib
import tarfile
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import msgspec
import pyarrow as pa

from cah_resources.contract import (
    DOWNLOAD_FIELDS,
    MARKER,
    DownloadStatus,
    ShardStats,
    shard_name,
    shard_paths,
    shard_row_schema,
)
from cah_resources.storage import TEMPORARY, DataRoot, writer_may_live

# Facts about the stored image; null unless the status is 'ok', whatever the outcome carried.
IMAGE_FACTS = ("bytes", "sha256", "width", "height", "original_width", "original_height")
MAX_SHARD_SIZE = 100_000  # keys give the row within a shard five digits
SHARD_DATA_FILES = ("tar", "parquet")  # the files a marker vouches for, by their sizes
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # what tarfile pads an archive to


def ustar_member(name: str, data: bytes, mtime: int) -> bytes:
    """One regular-file member of a ustar archive (header, data, padding), as tarfile writes it.

    Built directly because tarfile's per-member bookkeeping was a third of the event loop's time
    per image; names here are short ASCII keys, so no long-name or PAX extension is ever needed.
    """
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        raise ValueError(f"tar member name {name!r} is longer than 100 bytes")
    header = bytearray(TAR_BLOCK)
    header[0 : len(encoded)] = encoded
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % len(data)
    header[136:148] = b"%011o\0" % mtime
    header[148:156] = b" " * 8
    header[156:157] = b"0"
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    padding = -len(data) % TAR_BLOCK
    return bytes(header) + data + b"\0" * padding


def sample_key(shard: int, row_in_shard: int) -> str:
    """The webdataset key of a row: stable across reruns because rows are the sorted candidates'."""
    return f"{shard:05d}{row_in_shard:05d}"


def rows_digest(uids: Iterable[str]) -> str:
    """What a shard's marker is keyed by: its input rows' uids, so changed candidates redo the shard."""
    digest = hashlib.sha256()
    for uid in uids:
        digest.update(uid.encode("utf-8") + b"\n")
    return digest.hexdigest()


def remove_unfinished_files(root: DataRoot, folder: str, shard: int, keep_published: bool = False) -> list[str]:
    """Delete what a killed writer of this shard left behind (temporary files, partial outputs).

    A shard being redone is redone whole, so nothing of it is worth keeping. A stale .done marker
    (its candidates changed) goes first: a crash part way leaves no marker beside missing files.
    ``keep_published`` (a finished shard made again) removes temporary files only: the shard stays
    readable until the new one replaces it.
    A temporary file of a writer that may still live (its process, on this host; else one that wrote
    in the last storage.STALE_TEMPORARY_SECONDS) is left to it (two runs of one shard): the last to publish wins.
    """
    name = shard_name(shard)
    removed = []
    entries = sorted(root.listdir(folder), key=lambda entry: entry != f"{name}{MARKER}")
    for entry in entries:
        if entry.startswith(f"{name}.") or entry.startswith(f"{name}_stats.json"):
            if keep_published and TEMPORARY not in entry:
                continue
            path = f"{folder}/{entry}"
            if TEMPORARY in entry and writer_may_live(root, path, entry.split(TEMPORARY, 1)[1]):
                continue
            try:
                root.remove(path)
            except FileNotFoundError:  # its writer published or dropped it meanwhile
                continue
            removed.append(entry)
    return removed


def file_sizes(root: DataRoot, paths: dict[str, str]) -> dict[str, int]:
    """Sizes in bytes of a shard's data files (tar, parquet): what its marker records and is checked by."""
    return {kind: root.fs.size(paths[kind]) for kind in SHARD_DATA_FILES}


def files_match_marker(root: DataRoot, paths: dict[str, str], marker: ShardStats) -> bool:
    """True when the shard's data files are there with the sizes its marker recorded (two stat calls).

    A marker written before sizes were recorded is trusted as it is.
    """
    recorded = marker.file_sizes
    if recorded is None:
        return True
    try:
        return file_sizes(root, paths) == recorded
    except FileNotFoundError:
        return False


def read_tar_names(path: str, root: DataRoot) -> tuple[list[str] | None, str | None]:
    """The member names of a shard's tar, or why they could not be read (the tar missing or broken).

    Checks run this on the compute engine's workers: a tar is image bytes, which the run process
    never reads from the store.
    """
    if not root.exists(path):
        return None, "no tar"
    try:
        with root.fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            return tar.getnames(), None
    except (tarfile.TarError, OSError, EOFError) as error:
        return None, str(error)


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
        self.paths = shard_paths(folder, shard)
        self.schema = shard_row_schema(candidate_schema)
        self._records: list[dict[str, Any] | None] = [None] * rows
        self._stack = ExitStack()
        self._tar: Any = None
        self._tar_size = 0
        self._tar_bytes = 0
        self._started = time.time()
        self._mtime = int(self._started)

    def __enter__(self) -> ShardWriter:
        self._tar = self._stack.enter_context(self.root.open_atomic(self.paths["tar"], "wb"))
        self._stack.callback(self._end_archive)
        return self

    def _end_archive(self) -> None:
        # Two zero blocks end a tar archive; tarfile also pads the file to a whole record.
        self._tar.write(b"\0" * (2 * TAR_BLOCK))
        self._tar_size += 2 * TAR_BLOCK
        self._tar.write(b"\0" * (-self._tar_size % TAR_RECORD))

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stack.__exit__(exc_type, exc, tb)

    def _sample(self, key: str, files: dict[str, bytes]) -> None:
        """A sample's files, next to each other as webdataset needs them, in one write."""
        members = b"".join(ustar_member(f"{key}.{ext}", data, self._mtime) for ext, data in files.items())
        self._tar.write(members)
        self._tar_size += len(members)
        self._tar_bytes += sum(len(data) for data in files.values())

    def add(self, row: int, candidate: dict[str, Any], outcome: dict[str, Any], jpeg: bytes | None) -> None:
        """Record row ``row`` (0-based within the shard); ``jpeg`` only for status 'ok'."""
        if self._records[row] is not None:
            raise ValueError(f"row {row} of shard {self.shard} was recorded twice")
        ok = outcome.get("status") == DownloadStatus.OK
        if ok and jpeg is None:
            raise ValueError(f"row {row} of shard {self.shard} is 'ok' but has no image")
        record = dict(candidate)
        record["key"] = sample_key(self.shard, row)
        for field in DOWNLOAD_FIELDS.names[1:]:
            record[field] = outcome.get(field) if ok or field not in IMAGE_FACTS else None
        self._records[row] = record
        if ok and jpeg is not None:  # (ok without an image raised above)
            self._sample(
                record["key"],
                {
                    "jpg": jpeg,
                    "txt": (record.get("text") or "").encode("utf-8"),
                    "json": msgspec.json.encode(record, order="sorted"),
                },
            )

    def close(self, stats: ShardStats) -> dict[str, Any]:
        """Publish tar, parquet, stats and marker (in that order); returns the marker's content.

        ``stats`` (the rows' range, network totals) gets the shard's own counts, sizes and times.
        """
        missing = [i for i, r in enumerate(self._records) if r is None]
        if missing:
            raise RuntimeError(f"shard {self.shard} closed with {len(missing)} rows unrecorded (first: {missing[0]})")
        records = [r for r in self._records if r is not None]  # all of them
        self.root.remove(self.paths["done"])  # a shard made again: unmarked while its files are replaced
        self._stack.close()  # finishes the tar and renames it into place
        table = pa.Table.from_pylist(records, schema=self.schema)
        self.root.write_parquet(self.paths["parquet"], table)
        sizes = file_sizes(self.root, self.paths)
        counts = Counter(r["status"] for r in records)
        ok_records = [r for r in records if r["status"] == DownloadStatus.OK]
        finished = time.time()
        written = replace(
            stats,
            shard=self.shard,
            count=self.rows,
            successes=counts[DownloadStatus.OK],
            failed=self.rows - counts[DownloadStatus.OK],
            status_counts=counts,
            bytes_ok_images=sum(r["bytes"] or 0 for r in ok_records),
            bytes_written=sum(sizes.values()),
            file_sizes=sizes,
            image_bytes_written=self._tar_bytes,
            start_time=self._started,
            end_time=finished,
            task_seconds=finished - self._started,  # the writer lives as long as the shard's task
        ).to_dict()
        self.root.write_json(self.paths["stats"], written)
        self.root.write_json(self.paths["done"], written)
        return written
