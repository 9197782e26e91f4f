"""The release: kept clip_pairs of a crawl's segments merged into LAION-style parquet files."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from cah_resources.contract import (
    CLIP_PAIRS,
    EMBEDDING_KINDS,
    EMBEDDINGS,
    IMAGE_SHARDS,
    CandidatesStats,
    ShardStats,
    candidates_stats_path,
    embedding_path,
    list_shards,
    release_folder,
    shard_paths,
    stage_folder,
)
from cah_resources.storage import DataRoot

MANIFEST = "release.json"
DEFAULT_ROWS_PER_FILE = 1_000_000
# Bump when the release columns change, so an unchanged input still makes a new build.
FORMAT_VERSION = 1

# LAION-5B's column names first (URL, TEXT, WIDTH, HEIGHT, similarity, LANGUAGE, NSFW, punsafe,
# pwatermark), then what ties a row back to this pipeline's outputs.
RELEASE_SCHEMA = pa.schema(
    [
        ("URL", pa.string()),
        ("TEXT", pa.string()),
        ("WIDTH", pa.int32()),  # of the original image, as in LAION
        ("HEIGHT", pa.int32()),
        ("similarity", pa.float32()),
        ("LANGUAGE", pa.string()),
        ("NSFW", pa.string()),  # UNLIKELY | UNSURE | NSFW
        ("punsafe", pa.float32()),
        ("pwatermark", pa.float32()),
        ("category", pa.string()),  # en | multi | nolang
        ("uid", pa.string()),  # blake2b-128 of url + NUL + text: the global dedup key
        ("segment", pa.string()),
        ("key", pa.string()),  # the sample's key in image_shards/<segment>/ tars
        ("page_url", pa.string()),
        ("sha256", pa.string()),  # of the downloaded image bytes
        ("clip_model", pa.string()),
    ]
)
# Release column <- clip_pairs column; WIDTH/HEIGHT fall back to the stored size.
_SOURCES = {
    "URL": "url",
    "TEXT": "text",
    "WIDTH": "original_width",
    "HEIGHT": "original_height",
    "similarity": "similarity",
    "LANGUAGE": "language",
    "NSFW": "nsfw",
    "punsafe": "nsfw_score",
    "pwatermark": "watermark_score",
    "category": "category",
    "uid": "uid",
    "key": "key",
    "page_url": "page_url",
    "sha256": "sha256",
    "clip_model": "clip_model",
}
_FALLBACKS = {"WIDTH": "width", "HEIGHT": "height"}
REQUIRED_COLUMNS = sorted({*_SOURCES.values(), *_FALLBACKS.values(), "kept"})
_COUNTED_COLUMNS = (("by_category", "category"), ("by_nsfw", "NSFW"), ("by_language", "LANGUAGE"))


@dataclass(frozen=True)
class ReleaseFile:
    path: str  # relative to the release folder
    rows: int
    bytes: int


@dataclass
class ReleaseSummary:
    """What a release holds and what it left out, as a person would ask."""

    build: str
    rows: int = 0
    files: list[ReleaseFile] = field(default_factory=list)
    by_category: dict[str, int] = field(default_factory=dict)
    by_nsfw: dict[str, int] = field(default_factory=dict)
    by_language: dict[str, int] = field(default_factory=dict)
    by_segment: dict[str, int] = field(default_factory=dict)
    shards: int = 0
    pairs_scored: int = 0  # clip_pairs rows read, kept or not
    missing_segments: list[str] = field(default_factory=list)  # no finished clip_pairs shard
    unfinished_shards: list[str] = field(default_factory=list)  # parquet without .done marker
    # What a publisher may state: the opt-out signals every image shard honoured and the hash lists
    # (kind, source, entries, sha256) candidates and image_shards applied.
    honoured: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClipPairsShard:
    segment: str
    name: str  # NNNNN
    path: str
    marker: bytes  # the .done marker's content: a finished shard's fingerprint


def release_dir(root: DataRoot, crawl: str) -> str:
    """Where a crawl's release lives: ``release/<CRAWL>/`` under the data root."""
    return release_folder(root, crawl)


def finished_clip_pairs_shards(
    root: DataRoot, segment_keys: Iterable[str]
) -> tuple[list[ClipPairsShard], list[str], list[str]]:
    """Finished clip_pairs shards of the segments in key order; plus segments with none, and
    shards still unfinished (parquet without marker), which are left out."""
    shards: list[ClipPairsShard] = []
    missing: list[str] = []
    unfinished: list[str] = []
    for segment in sorted(set(segment_keys)):
        folder = stage_folder(root, CLIP_PAIRS, segment)
        finished, written = list_shards(root, folder)
        unfinished += [f"{segment}/{name}" for name in sorted(set(written) - set(finished))]
        if not finished:
            missing.append(segment)
        for name in finished:
            paths = shard_paths(folder, int(name))
            shards.append(ClipPairsShard(segment, name, paths["parquet"], root.read_bytes(paths["done"])))
    return shards, missing, unfinished


def release_rows(table: pa.Table, segment: str, source: str = "") -> pa.Table:
    """The kept rows of one clip_pairs table, in release columns."""
    absent = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if absent:
        raise ValueError(
            f"clip_pairs table {source or segment} lacks columns {absent}; rematerialize clip_pairs for {segment}"
        )
    kept = table.filter(pc.fill_null(table.column("kept"), False))
    columns = []
    for target in RELEASE_SCHEMA:
        if target.name == "segment":
            columns.append(pa.array([segment] * kept.num_rows, pa.string()))
            continue
        column = kept.column(_SOURCES[target.name])
        if target.name in _FALLBACKS:
            column = pc.coalesce(column, kept.column(_FALLBACKS[target.name]))
        columns.append(column.cast(target.type))
    return pa.Table.from_arrays(columns, schema=RELEASE_SCHEMA)


def _build_id(shards: list[ClipPairsShard], rows_per_file: int) -> str:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{FORMAT_VERSION}|{rows_per_file}".encode())
    for shard in shards:
        digest.update(f"|{shard.segment}/{shard.name}|".encode())
        digest.update(shard.marker)
    return digest.hexdigest()


def _chunks(tables: Iterable[pa.Table], rows_per_file: int) -> Iterator[pa.Table]:
    pending: list[pa.Table] = []
    pending_rows = 0
    for table in tables:
        pending.append(table)
        pending_rows += table.num_rows
        while pending_rows >= rows_per_file:
            merged = pa.concat_tables(pending)
            yield merged.slice(0, rows_per_file)
            rest = merged.slice(rows_per_file)
            pending, pending_rows = [rest], rest.num_rows
    if pending_rows:
        yield pa.concat_tables(pending)


def build_release(
    root: DataRoot,
    segment_keys: Iterable[str],
    out_dir: str,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    finished: tuple[list[ClipPairsShard], list[str], list[str]] | None = None,
) -> ReleaseSummary:
    """Merge the kept pairs of ``segment_keys`` into ``out_dir/<build>/part-NNNNN.parquet``.

    Rows go in segment, shard and row order, at most ``rows_per_file`` per file, so the same
    inputs always give the same files. ``out_dir/release.json`` (the manifest: files and
    counts) is written last and names the build; older builds are removed after it, so a
    reader following the manifest never sees half a release. ``finished`` is
    ``finished_clip_pairs_shards(root, segment_keys)`` when the caller has it already (a listing of
    every segment's folder and a read of every marker).
    """
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, not {rows_per_file}")
    segment_keys = list(segment_keys)
    shards, missing, unfinished = finished or finished_clip_pairs_shards(root, segment_keys)
    build = _build_id(shards, rows_per_file)
    summary = ReleaseSummary(build=build, missing_segments=missing, unfinished_shards=unfinished)
    counters: dict[str, Counter[str]] = {
        name: Counter() for name in ("by_category", "by_nsfw", "by_language", "by_segment")
    }

    def kept_tables() -> Iterator[pa.Table]:
        for shard in shards:
            table = root.read_parquet(shard.path)
            summary.shards += 1
            summary.pairs_scored += table.num_rows
            rows = release_rows(table, shard.segment, source=shard.path)
            for name, column in _COUNTED_COLUMNS:
                counters[name].update(_value_counts(rows.column(column)))
            counters["by_segment"][shard.segment] += rows.num_rows
            yield rows

    for number, chunk in enumerate(_chunks(kept_tables(), rows_per_file)):
        relative = f"{build}/part-{number:05d}.parquet"
        path = f"{out_dir}/{relative}"
        root.write_parquet(path, chunk)
        summary.files.append(ReleaseFile(relative, chunk.num_rows, root.fs.size(path)))
        summary.rows += chunk.num_rows
    for name, counter in counters.items():
        setattr(summary, name, dict(sorted(counter.items())))
    summary.honoured = honoured_opt_outs_of(root, segment_keys)
    root.write_json(f"{out_dir}/{MANIFEST}", summary.to_json())
    for entry in root.listdir(out_dir):
        if entry not in (build, MANIFEST) and not entry.startswith(f"{MANIFEST}.tmp"):
            root.remove(f"{out_dir}/{entry}")
    return summary


def honoured_opt_outs_of(root: DataRoot, segment_keys: Iterable[str]) -> dict:
    """The opt-out signals all finished image shards of the segments honoured, and every blocklist applied."""
    from cah_resources.image_shards.stage import read_segment_markers, summarize_markers  # the downloader's imports

    keys = list(segment_keys)
    started = [key for key in keys if root.exists(stage_folder(root, IMAGE_SHARDS, key))]
    shards = summarize_markers([marker for key in started for marker in read_segment_markers(root, key)])
    paths = [path for path in (candidates_stats_path(root, key) for key in keys) if root.exists(path)]
    candidates = CandidatesStats.total(CandidatesStats.from_dict(root.read_json(path)) for path in paths)
    return (shards + ShardStats(blocklists=candidates.blocklists)).honoured()  # the lists of both stages


def read_release(root: DataRoot, out_dir: str) -> pa.Table:
    """All rows of the release the manifest in ``out_dir`` names, in order."""
    manifest = root.read_json(f"{out_dir}/{MANIFEST}")
    tables = [root.read_parquet(f"{out_dir}/{f['path']}") for f in manifest["files"]]
    return pa.concat_tables(tables) if tables else RELEASE_SCHEMA.empty_table()


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    if len(column) == 0:
        return {}
    counts = pc.value_counts(pc.fill_null(column, "null")).to_pylist()
    return {item["values"]: item["counts"] for item in counts}


def merge_embeddings(root: DataRoot, shards: Iterable[ClipPairsShard], out_dir: str) -> dict[str, int]:
    """The segments' clip-retrieval files in one folder per model, renamed ``<kind>_<segment>-<NNNNN>``.

    Per segment the files are ``img_emb_NNNNN.npy``, which collide across segments; with the segment
    in the name they are unique and sort alike in the three kinds, so clip-retrieval's and autofaiss's
    readers take ``out_dir/<model folder>`` as it is. Files of shards no longer finished are removed.
    Returns the shards merged per model folder.
    """
    merged: Counter = Counter()
    wanted: set[str] = set()
    model_folders: dict[str, list[str]] = {}  # per segment, listed once for all its shards
    for shard in shards:
        segment_dir = stage_folder(root, CLIP_PAIRS, shard.segment)
        if shard.segment not in model_folders:
            model_folders[shard.segment] = [n for n in root.listdir(segment_dir) if n.startswith(EMBEDDINGS)]
        for folder in model_folders[shard.segment]:
            sources = [embedding_path(f"{segment_dir}/{folder}", kind, shard.name) for kind, _ in EMBEDDING_KINDS]
            if not all(root.exists(path) for path in sources):
                continue  # scored without write_embeddings, or by another model
            for (kind, _), source in zip(EMBEDDING_KINDS, sources, strict=True):
                target = embedding_path(f"{out_dir}/{folder}", kind, f"{shard.segment}-{shard.name}")
                wanted.add(target)
                root.write_bytes(target, root.read_bytes(source))
            merged[folder] += 1
    for folder in root.listdir(out_dir) if root.exists(out_dir) else []:
        for kind, _ in EMBEDDING_KINDS:
            kind_dir = f"{out_dir}/{folder}/{kind}"
            for name in root.listdir(kind_dir) if root.exists(kind_dir) else []:
                if f"{kind_dir}/{name}" not in wanted:
                    root.remove(f"{kind_dir}/{name}")
    return dict(merged)
