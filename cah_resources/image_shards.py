"""The image_shards stage: one shard of a segment's sorted candidates → downloaded, checked, resized, written."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cah_resources.downloader import Downloader, Fetched, FetchSettings
from cah_resources.image_pool import image_pool, replace_broken_pool
from cah_resources.resizer import ImageOutcome, ResizeSettings, check_body_size, process_image
from cah_resources.shard_writer import MAX_SHARD_SIZE, ShardWriter, remove_unfinished_files, shard_paths
from cah_resources.storage import DataRoot

STAGE = "image_shards"
IMAGE_OUTCOME_FIELDS = tuple(f.name for f in fields(ImageOutcome) if f.name != "jpeg")


@dataclass(frozen=True)
class ShardSettings:
    """Everything a shard task needs besides its rows; small and picklable."""

    fetch: FetchSettings = field(default_factory=FetchSettings)
    resize: ResizeSettings = field(default_factory=ResizeSettings)
    shard_size: int = 10_000
    image_processes: int = 1  # Pillow worker processes per shard task (at least one); Dask runs one task per core
    # Downloaded bodies waiting for the image workers, in bytes per shard task: past it, no new
    # download starts. The network runs ahead of the image work by this much, so slow hosts are
    # waited on while images are processed, and memory stays bounded.
    image_backlog_bytes: int = 128_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.shard_size <= MAX_SHARD_SIZE:
            raise ValueError(f"shard_size must be within 1..{MAX_SHARD_SIZE}, not {self.shard_size}")
        if self.image_backlog_bytes < 1:
            raise ValueError(f"image_backlog_bytes must be a positive number of bytes, not {self.image_backlog_bytes}")

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> ShardSettings:
        """Settings from one flat mapping of field names (a resource's config); lists become tuples."""

        def pick(kind) -> dict[str, Any]:
            chosen = {f.name: values[f.name] for f in fields(kind) if f.name in values}
            return {k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items()}

        return cls(fetch=FetchSettings(**pick(FetchSettings)), resize=ResizeSettings(**pick(ResizeSettings)),
                   **{k: v for k, v in pick(cls).items() if k not in ("fetch", "resize")})


@dataclass(frozen=True)
class ShardUnit:
    """One task: rows [start, stop) of a segment's candidates parquet become shard ``shard``."""

    root: DataRoot
    segment: str
    shard: int
    start: int
    stop: int


def segment_folder(root: DataRoot, segment: str) -> str:
    return root.path(STAGE, segment)


def candidates_path(root: DataRoot, segment: str) -> str:
    """Stage 1's output per the data layout. Spelled out rather than imported from the candidates
    module, whose WAT and language dependencies (and Dagster) every shard worker would then load."""
    return root.path("candidates", segment, "candidates.parquet")


def plan_shards(root: DataRoot, segment: str, shard_size: int) -> list[ShardUnit]:
    """The shards of a segment: consecutive slices of its candidates, ``shard_size`` rows each."""
    path = candidates_path(root, segment)
    if not root.exists(path):
        raise FileNotFoundError(f"{path} does not exist: materialize the candidates of {segment} first")
    with root.fs.open(path, "rb") as handle:
        rows = pq.ParquetFile(handle).metadata.num_rows
    return [
        ShardUnit(root, segment, i, i * shard_size, min(rows, (i + 1) * shard_size))
        for i in range(math.ceil(rows / shard_size))
    ]


def read_marker(unit: ShardUnit) -> dict[str, Any] | None:
    """The shard's completion marker, or None while the shard is unfinished."""
    path = shard_paths(unit.root, segment_folder(unit.root, unit.segment), unit.shard)["done"]
    if not unit.root.exists(path):
        return None
    marker = unit.root.read_json(path)
    if (marker.get("start"), marker.get("stop")) != (unit.start, unit.stop):
        raise ValueError(
            f"shard {unit.shard} of {unit.segment} on disk holds rows {marker.get('start')}..{marker.get('stop')}, "
            f"not {unit.start}..{unit.stop}: it was written with another shard_size; use that one or delete "
            f"{segment_folder(unit.root, unit.segment)}"
        )
    return marker


def read_rows(unit: ShardUnit) -> pa.Table:
    """Rows [start, stop) of the candidates parquet, reading only the row groups that hold them."""
    path = candidates_path(unit.root, unit.segment)
    with unit.root.fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        groups, offsets, first = [], [], 0
        for i in range(parquet.num_row_groups):
            count = parquet.metadata.row_group(i).num_rows
            if first < unit.stop and first + count > unit.start:
                groups.append(i)
                offsets.append(first)
            first += count
        if not groups:
            return parquet.schema_arrow.empty_table()
        table = parquet.read_row_groups(groups)
    return table.slice(unit.start - offsets[0], unit.stop - unit.start)


async def _check_image(body: bytes, settings: ShardSettings) -> ImageOutcome:
    early = check_body_size(body, settings.resize)
    if early is not None:
        return early
    loop = asyncio.get_running_loop()
    for _ in range(2):
        pool = image_pool(settings.image_processes)
        try:
            return await loop.run_in_executor(pool, process_image, body, settings.resize)
        except BrokenProcessPool:
            # A decoder crashed a worker (or the OS killed it); every image in flight there is lost
            # with it, so each gets one more try on a fresh pool before being blamed.
            replace_broken_pool(settings.image_processes, pool)
    return ImageOutcome("decoder_crashed", "the image worker died twice while decoding this image")


def _outcome_fields(fetched: Fetched, image: ImageOutcome | None) -> dict[str, Any]:
    if image is None:
        return {"status": fetched.status, "http_status": fetched.http_status, "error_message": fetched.error_message}
    facts = {name: getattr(image, name) for name in IMAGE_OUTCOME_FIELDS}
    return {**facts, "http_status": fetched.http_status}


class BodyBacklog:
    """Bytes a shard task holds for downloads not yet through the image workers.

    A download claims the mean body size so far when it starts, its body's size once that
    arrives, and nothing once its image is done. A new download starts only while the claims
    stay under the limit (or none is held), so memory is bounded however far the network runs
    ahead of the image work.
    """

    def __init__(self, limit: int, first_guess: int = 100_000) -> None:
        self.limit, self.claimed = limit, 0
        self._bodies, self._body_bytes, self._first_guess = 0, 0, first_guess
        self._changed = asyncio.Condition()
        self._waiting = 0

    def _guess(self) -> int:
        return self._body_bytes // self._bodies if self._bodies else self._first_guess

    def _has_room(self) -> bool:
        return self.claimed == 0 or self.claimed + self._guess() <= self.limit

    async def claim(self) -> BodyClaim:
        """Wait for room, then claim the expected size of one more download."""
        if not self._has_room():
            async with self._changed:
                self._waiting += 1
                try:
                    await self._changed.wait_for(self._has_room)
                finally:
                    self._waiting -= 1
        return BodyClaim(self, self._guess())

    def _resize(self, claim: BodyClaim, size: int) -> None:
        self.claimed += size - claim.size
        claim.size = size

    def _body_arrived(self, claim: BodyClaim, size: int) -> None:
        self._bodies, self._body_bytes = self._bodies + 1, self._body_bytes + size
        self._resize(claim, size)

    async def _release(self, claim: BodyClaim) -> None:
        self._resize(claim, 0)
        if self._waiting:
            async with self._changed:
                self._changed.notify_all()


class BodyClaim:
    """One download's share of the backlog; ``async with`` it to give it back when the image is done."""

    def __init__(self, backlog: BodyBacklog, size: int) -> None:
        self.backlog, self.size = backlog, 0
        backlog._resize(self, size)

    def body_arrived(self, size: int) -> None:
        self.backlog._body_arrived(self, size)

    async def __aenter__(self) -> BodyClaim:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.backlog._release(self)


async def _download_rows(rows: list[dict], settings: ShardSettings, writer: ShardWriter) -> dict:
    totals = {"bytes_fetched": 0}
    backlog = BodyBacklog(settings.image_backlog_bytes)
    async with Downloader(settings.fetch) as downloader:

        async def one(index: int, row: dict, claim: BodyClaim) -> None:
            image = None
            async with claim:
                # Network slots are held by the download itself (fetch): a body waiting for an
                # image worker does not keep the next URL (maybe a slow host) from starting.
                fetched = await downloader.fetch(row["url"])
                if fetched.body is not None:
                    totals["bytes_fetched"] += len(fetched.body)
                    claim.body_arrived(len(fetched.body))
                    image = await _check_image(fetched.body, settings)
            writer.add(index, row, _outcome_fields(fetched, image), image.jpeg if image is not None else None)

        # One loop admits the rows in order, so only it ever waits for room in the backlog.
        started = [asyncio.create_task(one(i, row, await backlog.claim())) for i, row in enumerate(rows)]
        await asyncio.gather(*started)
        totals.update(downloader.dns_totals())  # lookups, failures and time in them: a slow resolver shows
    return totals


def _event_loop_factory():
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def download_shard(unit: ShardUnit, settings: ShardSettings) -> dict[str, Any]:
    """Download one shard and publish it; a shard already marked done is returned as it is.

    Safe to rerun after a crash at any point: a shard is either complete with its marker or is
    redone from its first row, and the other shards are untouched.
    """
    marker = read_marker(unit)
    if marker is not None:
        return {**marker, "skipped": True}
    folder = segment_folder(unit.root, unit.segment)
    remove_unfinished_files(unit.root, folder, unit.shard)
    table = read_rows(unit)
    rows = table.to_pylist()
    started = time.perf_counter()
    with ShardWriter(unit.root, folder, unit.shard, len(rows), table.schema) as writer:
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            totals = runner.run(_download_rows(rows, settings, writer))
        seconds = time.perf_counter() - started
        pool = image_pool(settings.image_processes)
        workers = "processes" if isinstance(pool, ProcessPoolExecutor) else "threads"
        marker = writer.close(start=unit.start, stop=unit.stop, segment=unit.segment, download_seconds=seconds,
                              image_workers=workers, **totals)
    return {**marker, "skipped": False}


def read_segment_markers(root: DataRoot, segment: str) -> list[dict[str, Any]]:
    """The completion markers of a segment's finished shards, in shard order."""
    folder = segment_folder(root, segment)
    return [root.read_json(f"{folder}/{name}") for name in root.listdir(folder) if name.endswith(".done")]


def summarize_markers(markers: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over shard markers: rows attempted, images kept, statuses, bytes written, DNS lookups."""
    statuses: Counter[str] = Counter()
    dns_failures: Counter[str] = Counter()
    for marker in markers:
        statuses.update(marker["status_counts"])
        dns_failures.update(marker.get("dns_failures", {}))  # markers written before DNS stats have none
    count, ok = sum(m["count"] for m in markers), sum(m["successes"] for m in markers)
    return {
        "shards": len(markers),
        "count": count,
        "successes": ok,
        "success_rate": round(ok / count, 4) if count else 0.0,
        "status_counts": dict(statuses),
        "bytes_written": sum(m["bytes_written"] for m in markers),
        "dns_lookups": sum(m.get("dns_lookups", 0) for m in markers),
        "dns_cache_hits": sum(m.get("dns_cache_hits", 0) for m in markers),
        "dns_failures": dict(dns_failures),
        "dns_seconds": round(sum(m.get("dns_seconds", 0.0) for m in markers), 3),
    }


def read_sample(root: DataRoot, segment: str, limit: int = 10) -> list[dict[str, Any]]:
    """A few rows of the segment's first finished shard for people to eyeball: ok rows first."""
    folder = segment_folder(root, segment)
    finished = [name[: -len(".done")] for name in root.listdir(folder) if name.endswith(".done")]
    if not finished:
        return []
    rows = root.read_parquet(f"{folder}/{finished[0]}.parquet").slice(0, 10 * limit).to_pylist()
    return sorted(rows, key=lambda r: r["status"] != "ok")[:limit]
