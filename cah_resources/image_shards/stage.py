"""The image_shards stage: one shard of a segment's sorted candidates → downloaded, checked, resized, written."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cah_resources.blocklists import blocklist
from cah_resources.contract import (
    IMAGE_SHARDS,
    DownloadStatus,
    ShardStats,
    candidates_path,
    finished_shards,
    shard_paths,
    stage_folder,
)
from cah_resources.fleet.unit_progress import UnitProgress
from cah_resources.fleet.worker_slot import WorkerSlot
from cah_resources.freed_memory import freed_memory_kept
from cah_resources.image_shards.body_reader import body_budget
from cah_resources.image_shards.downloader import Downloader, Fetched, FetchSettings
from cah_resources.image_shards.gc_pacing import fewer_collections
from cah_resources.image_shards.image_pool import ImageWorkers
from cah_resources.image_shards.resizer import ImageOutcome, ResizeSettings, check_body_size
from cah_resources.image_shards.shard_writer import (
    MAX_SHARD_SIZE,
    ShardWriter,
    files_match_marker,
    remove_unfinished_files,
    rows_digest,
)
from cah_resources.storage import DataRoot

SHARD_INPUT_COLUMNS = ("uid", "url")  # what a shard task reads of each candidate: its marker's digest, its URL
IMAGE_OUTCOME_FIELDS = tuple(f.name for f in fields(ImageOutcome) if f.name != "jpeg")


@dataclass(frozen=True)
class ShardSettings:
    """Everything a shard task needs besides its rows; small and picklable."""

    fetch: FetchSettings = field(default_factory=FetchSettings)
    resize: ResizeSettings = field(default_factory=ResizeSettings)
    shard_size: int = 10_000
    """Candidates per shard: one tar, parquet and stats file each, and one Dask task."""
    image_processes: int = 1
    """Pillow worker processes per shard task (at least one); Dask runs one task per core."""
    image_backlog_bytes: int = 128_000_000
    """Downloaded bodies waiting for the image workers, in bytes per shard task: past it, no new download
    starts. The network runs ahead of the image work by this much, and memory stays bounded."""
    blocked_image_lists: tuple[str, ...] = ()
    """Image-content hash lists (SHA-256 or MD5 hex per line; paths or fsspec URLs): a downloaded body
    whose hash is listed becomes blocklisted_image and is never written."""
    overlap_tails: bool = True
    """When a shard's last rows only wait on slow hosts, the next shard on the worker starts beside them
    (Dask's secede), so segments of many shards finish sooner; a worker can then hold two shards' memory
    and connections at once. Off: one shard per worker thread at any time."""

    def __post_init__(self) -> None:
        if not 1 <= self.shard_size <= MAX_SHARD_SIZE:
            raise ValueError(f"shard_size must be within 1..{MAX_SHARD_SIZE}, not {self.shard_size}")
        if self.image_backlog_bytes < 1:
            raise ValueError(f"image_backlog_bytes must be a positive number of bytes, not {self.image_backlog_bytes}")


@dataclass(frozen=True)
class ShardUnit:
    """One task: rows [start, stop) of a segment's candidates parquet become shard ``shard``."""

    root: DataRoot
    segment: str
    shard: int
    start: int
    stop: int


def segment_folder(root: DataRoot, segment: str) -> str:
    return stage_folder(root, IMAGE_SHARDS, segment)


def plan_shards(root: DataRoot, segment: str, shard_size: int) -> list[ShardUnit]:
    """The shards of a segment: consecutive slices of its candidates, ``shard_size`` rows each."""
    path = candidates_path(root, segment)
    if not root.exists(path):
        raise FileNotFoundError(f"{path} does not exist: materialize the candidates of {segment} first")
    with root.fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        rows, names = parquet.metadata.num_rows, parquet.schema_arrow.names
    missing = [name for name in SHARD_INPUT_COLUMNS if name not in names]
    if missing:
        raise ValueError(
            f"{path} has no {' or '.join(missing)} column: it is not a candidates parquet "
            f"(columns: {', '.join(names[:12])}); rematerialize the candidates of {segment}"
        )
    return [
        ShardUnit(root, segment, i, i * shard_size, min(rows, (i + 1) * shard_size))
        for i in range(math.ceil(rows / shard_size))
    ]


def read_marker(unit: ShardUnit) -> dict[str, Any] | None:
    """The shard's completion marker, or None while the shard is unfinished, its candidates changed
    since, or its data files are not those the marker recorded.

    A marker holds the digest of its rows' uids: candidates rewritten with the same number of rows
    but other content make it stale, and the shard is redone.
    """
    path = shard_paths(segment_folder(unit.root, unit.segment), unit.shard)["done"]
    if not unit.root.exists(path):
        return None
    marker = unit.root.read_json(path)
    stats = ShardStats.from_dict(marker)
    if (stats.start, stats.stop) != (unit.start, unit.stop):
        raise ValueError(
            f"shard {unit.shard} of {unit.segment} on disk holds rows {stats.start}..{stats.stop}, "
            f"not {unit.start}..{unit.stop}: it was written with another shard_size; use that one or delete "
            f"{segment_folder(unit.root, unit.segment)}"
        )
    if stats.rows_digest != rows_digest(read_rows(unit, columns=["uid"]).column("uid").to_pylist()):
        return None
    if not files_match_marker(unit.root, shard_paths(segment_folder(unit.root, unit.segment), unit.shard), stats):
        return None  # its tar or parquet was deleted, truncated or replaced since: the shard is redone
    return marker


def read_rows(unit: ShardUnit, columns: list[str] | None = None) -> pa.Table:
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
            return parquet.schema_arrow.empty_table().select(columns or parquet.schema_arrow.names)
        table = parquet.read_row_groups(groups, columns=columns)
    return table.slice(unit.start - offsets[0], unit.stop - unit.start)


async def _check_image(body: bytes, settings: ShardSettings, workers: ImageWorkers) -> ImageOutcome:
    early = check_body_size(body, settings.resize)
    if early is not None:
        return early
    return await workers.check(body, settings.resize)


def _outcome_fields(fetched: Fetched, image: ImageOutcome | None) -> dict[str, Any]:
    if image is None:
        return {"status": fetched.status, "http_status": fetched.http_status, "error_message": fetched.error_message}
    facts = {name: getattr(image, name) for name in IMAGE_OUTCOME_FIELDS}
    return {**facts, "http_status": fetched.http_status}


class BodyBacklog:
    """Bytes a shard task holds in bodies: downloading, waiting for the image workers, or in them.

    A download claims the mean body size so far when it starts; as its body arrives the claim grows
    to the bytes held (to the whole Content-Length at once when one is given), and it is given back
    when the image is done. A claim grows, and a new download starts, only while the claims stay
    under the limit; otherwise it waits, its connection paused, for images to finish. Growing bodies
    go before new downloads. When every claim is a download waiting to grow, nothing would ever free
    room: the first of them then grows alone past the limit, by at most one body, so memory stays
    within the limit plus one body however far the network runs ahead of the image work.
    """

    def __init__(self, limit: int, first_guess: int = 100_000) -> None:
        self.limit, self.claimed = limit, 0
        self._bodies, self._body_bytes, self._first_guess = 0, 0, first_guess
        self._holders = 0
        self._growers: deque[tuple[BodyClaim, int, asyncio.Future]] = deque()
        self._starters: deque[asyncio.Future] = deque()
        self._unbounded: BodyClaim | None = None

    def _guess(self) -> int:
        return self._body_bytes // self._bodies if self._bodies else self._first_guess

    def _fits(self, extra: int) -> bool:
        return self.claimed == 0 or self.claimed + extra <= self.limit

    async def claim(self) -> BodyClaim:
        """Wait for room, then claim the expected size of one more download."""
        if not self._growers and not self._starters and self._fits(self._guess()):
            return BodyClaim(self, self._guess())
        granted = asyncio.get_running_loop().create_future()
        self._starters.append(granted)
        try:
            return await granted
        except asyncio.CancelledError:
            self._forget(self._starters, granted)
            raise

    async def _grow(self, claim: BodyClaim, total: int) -> None:
        if total <= claim.size:
            return
        if claim is self._unbounded or (not self._growers and self._fits(total - claim.size)):
            self._resize(claim, total)
            return
        granted = asyncio.get_running_loop().create_future()
        self._growers.append((claim, total, granted))
        self._wake()
        try:
            await granted
        except asyncio.CancelledError:
            self._forget(self._growers, granted)
            raise

    def _forget(self, queue: deque, granted: asyncio.Future) -> None:
        if granted.done() and not granted.cancelled():  # granted just as it was cancelled: give it back
            result = granted.result()
            if isinstance(result, BodyClaim):
                result._drop()
        for entry in list(queue):
            if entry is granted or (isinstance(entry, tuple) and entry[2] is granted):
                queue.remove(entry)
        self._wake()

    def _wake(self) -> None:
        while self._growers:
            claim, total, granted = self._growers[0]
            if granted.done():  # cancelled; _forget takes it out
                self._growers.popleft()
                continue
            stuck = self._unbounded is None and len(self._growers) == self._holders
            if not (self._fits(total - claim.size) or stuck):
                break
            self._growers.popleft()
            if not self._fits(total - claim.size):
                self._unbounded = claim  # grows to its end alone: one body past the limit at most
            self._resize(claim, total, wake=False)
            granted.set_result(None)
        while not self._growers and self._starters and self._fits(self._guess()):
            granted = self._starters.popleft()
            if not granted.done():
                granted.set_result(BodyClaim(self, self._guess()))

    def _resize(self, claim: BodyClaim, size: int, wake: bool = True) -> None:
        shrinks = size < claim.size
        self.claimed += size - claim.size
        claim.size = size
        if shrinks and wake:
            self._wake()

    def _body_arrived(self, claim: BodyClaim, size: int) -> None:
        self._bodies, self._body_bytes = self._bodies + 1, self._body_bytes + size
        self._resize(claim, size)

    def _release(self, claim: BodyClaim) -> None:
        self._holders -= 1
        if self._unbounded is claim:
            self._unbounded = None
        self._resize(claim, 0, wake=False)
        self._wake()


class BodyClaim:
    """One download's share of the backlog; ``async with`` it to give it back when the image is done.

    The body reader grows it through ``reserve`` (it is the download's ``body_budget``).
    """

    def __init__(self, backlog: BodyBacklog, size: int) -> None:
        self.backlog, self.size, self._held = backlog, 0, True
        backlog._holders += 1
        backlog._resize(self, size, wake=False)

    async def reserve(self, total: int) -> None:
        """Return once ``total`` bytes of body may be held, waiting for room if needed."""
        await self.backlog._grow(self, total)

    def body_arrived(self, size: int) -> None:
        self.backlog._body_arrived(self, size)

    def _drop(self) -> None:
        if self._held:
            self._held = False
            self.backlog._release(self)

    async def __aenter__(self) -> BodyClaim:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._drop()


class TailHandOff:
    """Calls ``leave`` as rows finish, once the rows still to finish are ``remaining`` or fewer, until it agrees.

    A shard that starts with no more rows than that never asks: it is all tail.
    """

    def __init__(self, rows: int, remaining: int, leave: Callable[[], bool]) -> None:
        self._rows, self._remaining, self._leave = rows, remaining, leave
        self.done = rows <= remaining

    def row_done(self) -> None:
        self._rows -= 1
        if not self.done and self._rows <= self._remaining:
            self.done = self._leave()


async def _download_rows(
    rows: list[dict],
    settings: ShardSettings,
    writer: ShardWriter,
    workers: ImageWorkers,
    progress: UnitProgress,
    slot: WorkerSlot,
) -> ShardStats:
    backlog = BodyBacklog(settings.image_backlog_bytes)
    blocked = blocklist(settings.blocked_image_lists)
    totals = ShardStats(blocklists=[{"kind": "image", **source} for source in blocked.sources])
    # A shard's last URLs wait on hangs and stalls for up to the timeout with the core idle (~10 s
    # of a 6,000-URL shard's 29). Once fewer rows remain than would fill half the network slots,
    # the next shard on this worker starts beside them.
    tail = TailHandOff(len(rows), settings.fetch.concurrency // 2, slot.leave if settings.overlap_tails else _stay)
    async with Downloader(settings.fetch) as downloader:

        async def one(index: int, row: dict, claim: BodyClaim) -> None:
            image = None
            async with claim:
                # Network slots are held by the download itself (fetch): a body waiting for an
                # image worker does not keep the next URL (maybe a slow host) from starting.
                reading_into = body_budget.set(claim)  # bodies count against the backlog as they arrive
                try:
                    fetched = await downloader.fetch(row["url"])
                finally:
                    body_budget.reset(reading_into)
                if fetched.body is not None and len(blocked) and blocked.lists(fetched.body):
                    fetched = replace(
                        fetched,
                        status=DownloadStatus.BLOCKLISTED_IMAGE,
                        body=None,
                        error_message="the image's hash is on a blocklist",
                    )
                if fetched.body is not None:
                    totals.bytes_fetched += len(fetched.body)
                    claim.body_arrived(len(fetched.body))
                    image = await _check_image(fetched.body, settings, workers)
                    totals.image_warnings += image.warnings
            writer.add(index, row, _outcome_fields(fetched, image), image.jpeg if image is not None else None)
            progress.step(image is not None)
            tail.row_done()

        # One loop admits the rows in order, so only it ever waits for room in the backlog.
        started = [asyncio.create_task(one(i, row, await backlog.claim())) for i, row in enumerate(rows)]
        await asyncio.gather(*started)
        totals += downloader.dns_totals()  # lookups, failures and time in them: a slow resolver shows
        totals += downloader.opt_out_totals()  # signals honoured, robots.txt / tdmrep.json requests
        totals.unresponsive_hosts = len(downloader.unresponsive_hosts)  # tarpits cut short (host_unresponsive)
    return totals


def _stay() -> bool:
    return True  # the tail is not handed off: nothing to do, and nothing to ask again


def _event_loop_factory():
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def download_shard(unit: ShardUnit, settings: ShardSettings, redo: bool = False) -> dict[str, Any]:
    """Download one shard and publish it; a shard already marked done is returned as it is, unless ``redo``.

    Safe to rerun after a crash at any point: a shard is either complete with its marker or is
    redone from its first row, and the other shards are untouched. A finished shard being redone
    stays whole and marked until its new files replace it, so a redo stopped part way loses nothing.
    """
    marker = read_marker(unit)
    if marker is not None and not redo:
        return {**marker, "skipped": True}
    folder = segment_folder(unit.root, unit.segment)
    remove_unfinished_files(unit.root, folder, unit.shard, keep_published=marker is not None)
    table = read_rows(unit)
    rows = table.to_pylist()
    # The image workers are this call's own: left running, they would keep a process that embeds
    # download_shard (a multiprocessing or ProcessPoolExecutor worker) from ever exiting.
    with (
        WorkerSlot() as slot,
        ImageWorkers(settings.image_processes) as workers,
        ShardWriter(unit.root, folder, unit.shard, len(rows), table.schema) as writer,
    ):
        with fewer_collections(), freed_memory_kept(), asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            progress = UnitProgress(f"shard {unit.segment}/{unit.shard:05d}", len(rows))  # lines in the run's log
            totals = runner.run(_download_rows(rows, settings, writer, workers, progress, slot))
        marker = writer.close(
            replace(
                totals,
                start=unit.start,
                stop=unit.stop,
                segment=unit.segment,
                image_workers=workers.kind,
                rows_digest=rows_digest(r["uid"] for r in rows),
            )
        )
    return {**marker, "skipped": False}


def read_segment_markers(root: DataRoot, segment: str) -> list[dict[str, Any]]:
    """The completion markers of a segment's finished shards, in shard order."""
    folder = segment_folder(root, segment)
    return [root.read_json(shard_paths(folder, int(name))["done"]) for name in finished_shards(root, folder)]


def summarize_markers(markers: list[dict[str, Any]]) -> ShardStats:
    """Totals over shard markers: rows attempted, images kept, statuses, bytes written, DNS lookups,
    the opt-out signals every shard honoured (one that did not means a release cannot claim it) and
    every blocklist any shard applied. Markers of older builds lack some stats: they count as none."""
    total = ShardStats.total(ShardStats.from_dict(m) for m in markers)
    if total.opt_out_signals is None:
        total.opt_out_signals = []
    return total


def read_sample(root: DataRoot, segment: str, limit: int = 10) -> list[dict[str, Any]]:
    """A few rows of the segment's first finished shard for people to eyeball: ok rows first."""
    folder = segment_folder(root, segment)
    finished = finished_shards(root, folder)
    if not finished:
        return []
    rows = root.read_parquet(shard_paths(folder, int(finished[0]))["parquet"]).slice(0, 10 * limit).to_pylist()
    return sorted(rows, key=lambda r: r["status"] != DownloadStatus.OK)[:limit]
