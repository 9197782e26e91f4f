"""The page_scores stage: one file of pages in, every page scored by a text classifier out (parquet, kept view).

A unit is one Parquet file of a segment's pages: a registered dataset's own file (read where it
is), or a WARC crawl's pages. It is read a window of rows at a time on the tokenizer's thread
(cah_resources.page_scores.classifier), scored on the model's, and streamed out in the input's
order: ``page_scores/<segment>/NNNNN.parquet`` has every input row with its page columns and
PAGE_SCORE_FIELDS, ``kept/NNNNN.parquet`` the kept rows, ``NNNNN.done`` the summary, written last.
A page without text (null) keeps its row with a null score, is not kept, and is counted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from cah_resources.batching import OomTally
from cah_resources.contract import (
    FORMAT_PARQUET,
    FORMAT_WARC,
    PAGE_SCORE_FIELDS,
    PAGE_SCORES,
    UNKNOWN_LANGUAGE,
    Damage,
    PageScoreStats,
    finished_shards,
    kept_path,
    pages_path,
    score_histogram,
    shard_name,
    shard_paths,
    stage_folder,
)
from cah_resources.crawl.dataset_files import options_for, text_column_problem
from cah_resources.crawl.segments import CrawlRegistration, registration_for_key
from cah_resources.errors import one_line
from cah_resources.freed_memory import freed_memory_kept
from cah_resources.page_scores.settings import ClassifierSettings
from cah_resources.redaction import redact_url
from cah_resources.storage import DataRoot

if TYPE_CHECKING:  # the classifier (torch, 3 s to import) is imported where pages are scored, not
    # where Dagster's definitions load this module for its plans and checks.
    from cah_resources.page_scores.classifier import Classifier

log = logging.getLogger(__name__)

LANGUAGE_COLUMN = "language"  # a page's language, where its source has one (WARC pages, FineWeb's files)


@dataclass(frozen=True)
class PageScoresUnit:
    """One work unit: one Parquet file of a segment's pages, and the text column to score."""

    root: DataRoot
    segment: str
    shard: int  # the file's place among the segment's files: its outputs are NNNNN.*
    source: str  # the file's URL (or local path)
    text_column: str
    source_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)

    def __repr__(self) -> str:  # a dataset file's URL may carry a token or a presigned URL's signature
        return (
            f"PageScoresUnit(root={self.root!r}, segment={self.segment!r}, shard={self.shard}, "
            f"source={redact_url(self.source)!r}, text_column={self.text_column!r})"
        )

    @property
    def name(self) -> str:
        return shard_name(self.shard)

    @property
    def folder(self) -> str:
        return stage_folder(self.root, PAGE_SCORES, self.segment)

    @property
    def table(self) -> str:
        return shard_paths(self.folder, self.shard)["parquet"]

    @property
    def kept(self) -> str:
        return kept_path(self.root, self.segment, self.shard, PAGE_SCORES)

    @property
    def marker(self) -> str:
        return shard_paths(self.folder, self.shard)["done"]


def dataset_units(root: DataRoot, registration: CrawlRegistration, segment: str) -> list[PageScoresUnit]:
    """A Parquet dataset's segment: one unit per file of it, read where it is (the dataset's pages are its files)."""
    return [
        PageScoresUnit(
            root, segment, i, url, registration.text_column or "text", options_for(url, root.url, root.storage_options)
        )
        for i, url in enumerate(registration.files_of(segment))
    ]


def warc_units(root: DataRoot, segment: str) -> list[PageScoresUnit]:
    """A WARC crawl's segment: one unit, the pages parquet its candidates step wrote (main text in "text")."""
    source = pages_path(root, segment)
    return [PageScoresUnit(root, segment, 0, source, "text", options_for(source, root.url, root.storage_options))]


def segment_units(root: DataRoot, segment: str) -> list[PageScoresUnit]:
    """The files of pages a segment's page_scores reads, by the format its crawl was registered with."""
    registration = registration_for_key(root, segment)
    if registration.format == FORMAT_PARQUET:
        return dataset_units(root, registration, segment)
    if registration.format == FORMAT_WARC:
        return warc_units(root, segment)
    raise ValueError(
        f"{segment}: page_scores scores pages, and a {registration.format} crawl has none here; "
        "register its WARC files (--format warc) or a Parquet dataset (--format parquet --files ...)"
    )


def pending_units(units: list[PageScoresUnit]) -> list[PageScoresUnit]:
    """Those of ``units`` without a marker yet (one listing per segment folder), and those counted as
    damaged whose file has changed since (a good copy put in its place)."""
    done: dict[str, set[int]] = {}
    for unit in units:
        if unit.segment not in done:
            done[unit.segment] = set(finished_units(unit.root, unit.segment))
    return [u for u in units if u.shard not in done[u.segment] or damage_repaired(u, u.root.read_json(u.marker))]


def source_version(unit: PageScoresUnit) -> str | None:
    """What the file of pages is now: fsspec's checksum of its size and modification time or ETag
    (None where it is gone: there is nothing new to score)."""
    fs, path = url_to_fs(unit.source, **unit.source_options)
    try:
        return str(fs.checksum(path))
    except FileNotFoundError:
        return None


def damage_repaired(unit: PageScoresUnit, marker: dict[str, Any]) -> bool:
    """Whether a file its marker counts as damaged has changed since it was read: it is scored again,
    so a repaired file's pages are not left out until a redo. Undamaged files are not looked at."""
    stats = PageScoreStats.from_dict(marker)
    if not stats.damage:
        return False
    now = source_version(unit)
    return now is not None and now != stats.source_version


def dataset_pages_view(root: DataRoot, registration: CrawlRegistration, segment: str) -> list[dict[str, Any]]:
    """What a Parquet dataset's segment holds as pages, from the files' footers only: file, rows, columns."""
    view = []
    for unit in dataset_units(root, registration, segment):
        fs, path = url_to_fs(unit.source, **unit.source_options)
        with fs.open(path, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
            view.append({"file": redact_url(unit.source), "rows": metadata.num_rows, "columns": metadata.schema.names})
    return view


def finished_units(root: DataRoot, segment: str) -> list[int]:
    return [int(name) for name in finished_shards(root, stage_folder(root, PAGE_SCORES, segment))]


def shard_summaries(root: DataRoot, segment: str) -> list[dict[str, Any]]:
    """The summary every finished page_scores file of the segment wrote into its marker."""
    folder = stage_folder(root, PAGE_SCORES, segment)
    return [root.read_json(shard_paths(folder, shard)["done"]) for shard in finished_units(root, segment)]


def output_schema(page_schema: pa.Schema) -> pa.Schema:
    """The page's own columns (less any named like a score field), then PAGE_SCORE_FIELDS."""
    return pa.schema([f for f in page_schema if f.name not in PAGE_SCORE_FIELDS.names] + list(PAGE_SCORE_FIELDS))


def _count_window(
    stats: PageScoreStats, languages: list[str | None], scores: np.ndarray, has_text: np.ndarray, kept: np.ndarray
) -> None:
    """Add one window's pages to the file's stats: counts and a score histogram per language."""
    stats.pages += len(scores)
    stats.no_text += int((~has_text).sum())
    language_array = np.array([lang or UNKNOWN_LANGUAGE for lang in languages], dtype=object)
    for language in sorted(set(language_array[has_text])):
        chosen = has_text & (language_array == language)
        stats.scored[language] += int(chosen.sum())
        stats.kept[language] += int((chosen & kept).sum())
        counts = score_histogram(scores[chosen]).tolist()
        previous = stats.histograms.get(language)
        stats.histograms[language] = (
            counts if previous is None else [a + b for a, b in zip(previous, counts, strict=True)]
        )


def _scored_batch(
    batch: pa.RecordBatch,
    scores: np.ndarray,
    has_text: np.ndarray,
    settings: ClassifierSettings,
    loaded: Classifier,
    schema: pa.Schema,
) -> tuple[pa.RecordBatch, np.ndarray]:
    from cah_resources.page_scores.classifier import int_scores

    kept = has_text & (np.nan_to_num(scores, nan=-np.inf) >= settings.threshold)
    n = batch.num_rows
    columns = {name: batch.column(name) for name in batch.schema.names if name not in PAGE_SCORE_FIELDS.names}
    columns.update(
        score=pa.array(scores, pa.float32(), mask=~has_text),
        int_score=pa.array(int_scores(np.nan_to_num(scores)), pa.int64(), mask=~has_text),
        kept=pa.array(kept, pa.bool_()),
        classifier_model=pa.array([loaded.name] * n, pa.string()),
        classifier_revision=pa.array([loaded.revision] * n, pa.string()),
    )
    return pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema), kept


def score_page_file(unit: PageScoresUnit, settings: ClassifierSettings, redo: bool = False) -> dict[str, Any]:
    """Score one file of pages and write its page_scores outputs; returns the file's summary.

    A file whose marker exists is not redone unless ``redo``, or unless it was counted as damaged and
    has changed since (``damage_repaired``): its summary is read back. Otherwise
    every output is rewritten from scratch, so a retried or interrupted file ends the same; a
    finished file being redone keeps its outputs and marker until the new ones are written.
    """
    from cah_resources.page_scores.classifier import load_classifier, prepared_windows, score_window

    root = unit.root
    if not redo and root.exists(unit.marker):
        marker = root.read_json(unit.marker)
        if not damage_repaired(unit, marker):
            return marker
    started = time.perf_counter()
    loaded = load_classifier(settings)
    fs, path = url_to_fs(unit.source, **unit.source_options)
    oom = OomTally()
    stats = PageScoreStats(
        segment=unit.segment,
        shard=unit.shard,
        device=loaded.device,
        dtype=loaded.dtype,
        model=loaded.name,
        revision=loaded.revision,
        score_rule=settings.score_rule if not settings.label else f"{settings.score_rule}:{settings.label}",
        threshold=settings.threshold,
        source_version=source_version(unit),  # before reading: a file replaced meanwhile is read again next run
    )
    # Token arrays and activations under 32 MiB are made and freed per batch: reused, not faulted in again.
    with freed_memory_kept(), contextlib.ExitStack() as stack:
        try:
            source = _open_pages(fs, path, stack)
        except STORE_FAILURES:
            raise
        except (pa.ArrowInvalid, OSError) as error:  # no footer, a truncated file, not Parquet at all
            if _opens(fs, path):  # it opens now: the store's hiccup, and the file is retried whole
                raise
            return _unreadable(unit, stats, error, started)
        problem = text_column_problem(source.schema_arrow, unit.text_column)
        if problem is not None:  # the plan checked its first file only
            raise ValueError(f"{redact_url(unit.source)} {problem}; the dataset's plan names it")
        has_language = LANGUAGE_COLUMN in source.schema_arrow.names
        schema = output_schema(source.schema_arrow)
        windows = _readable_windows(unit, fs, path, source, settings.window, stats)

        with (
            root.open_atomic(unit.table) as table_out,
            root.open_atomic(unit.kept) as kept_out,
            # Closed before their files, also when scoring raises (else a closed file's writer complains).
            pq.ParquetWriter(table_out, schema, compression="zstd") as writer,
            pq.ParquetWriter(kept_out, schema, compression="zstd") as kept_writer,
        ):
            for window in prepared_windows(loaded, settings, windows):
                scores = score_window(loaded, window, oom)
                batch = window.payload
                has_text = ~np.asarray(batch.column(unit.text_column).is_null().to_numpy(zero_copy_only=False))
                out, kept = _scored_batch(batch, scores, has_text, settings, loaded, schema)
                writer.write_batch(out)
                if kept.any():
                    kept_writer.write_batch(out.filter(pa.array(kept)))
                languages = batch.column(LANGUAGE_COLUMN).to_pylist() if has_language else [None] * batch.num_rows
                _count_window(stats, languages, scores, has_text, kept)
                stats.tokens += window.tokens
            writer.close()
            kept_writer.close()
            root.remove(unit.marker)  # unmarked while its outputs are replaced (as the block ends)
    stats.task_seconds = time.perf_counter() - started
    stats.device_memory = {"oom_halvings": oom.halvings, "oom_alone": oom.alone}
    summary = stats.to_dict()
    root.write_json(unit.marker, summary)
    log.info("page_scores %s/%s: %d pages, %d kept", unit.segment, unit.name, stats.pages, stats.pages_kept)
    return summary


# Failures of the store, not of the file's bytes: raised (and retried), never counted as damage.
STORE_FAILURES = (FileNotFoundError, PermissionError, ConnectionError, TimeoutError)


def _open_pages(fs: Any, path: str, stack: contextlib.ExitStack) -> pq.ParquetFile:
    return pq.ParquetFile(stack.enter_context(fs.open(path, "rb")))


def _opens(fs: Any, path: str) -> bool:
    """Whether the file's footer reads on a second, fresh try (damage fails the same way again)."""
    with contextlib.ExitStack() as stack:
        try:
            _open_pages(fs, path, stack)
        except STORE_FAILURES:
            raise
        except (pa.ArrowInvalid, OSError):
            return False
    return True


def _unreadable(unit: PageScoresUnit, stats: PageScoreStats, error: BaseException, started: float) -> dict[str, Any]:
    """A file of pages whose footer does not read: counted as damage with no rows, so its segment goes on."""
    root = unit.root
    stats.damage[Damage.CORRUPT_PARQUET] += 1
    stats.task_seconds = time.perf_counter() - started
    summary = stats.to_dict()
    root.remove(unit.marker)
    for output in (unit.table, unit.kept):  # an earlier run's outputs of the file are not its scores now
        root.remove(output)
    root.write_json(unit.marker, summary)
    log.warning(
        "page_scores %s/%s: %s does not read as Parquet (%s): counted as %s",
        unit.segment,
        unit.name,
        redact_url(unit.source),
        one_line(error),
        Damage.CORRUPT_PARQUET.value,
    )
    return summary


def _readable_windows(
    unit: PageScoresUnit, fs: Any, path: str, source: pq.ParquetFile, window: int, stats: PageScoreStats
) -> Iterator[tuple[pa.RecordBatch, list]]:
    """(batch, texts) of up to ``window`` rows, in the file's order. A row group that does not decode
    (twice: once in the stream, once read alone from a fresh handle) has its unread rows counted as
    damage; the next row group is read on. Runs on the tokenizer's thread."""
    metadata = source.metadata
    ends = np.cumsum([metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)], dtype=np.int64)
    done, first = 0, 0  # rows yielded; the first row group not yet read
    while first < len(ends):
        try:
            for batch in source.iter_batches(batch_size=window, row_groups=range(first, len(ends))):
                done += batch.num_rows
                yield batch, batch.column(unit.text_column).to_pylist()
            return
        except STORE_FAILURES:
            raise
        except (pa.ArrowInvalid, OSError) as error:
            group = int(np.searchsorted(ends, done, side="right"))  # the row group holding the next row
            start = int(ends[group - 1]) if group else 0
            try:
                with fs.open(path, "rb") as handle:
                    rest = pq.ParquetFile(handle).read_row_group(group).slice(done - start)
            except STORE_FAILURES:
                raise
            except (pa.ArrowInvalid, OSError):
                stats.damage[Damage.CORRUPT_ROW_GROUP] += int(ends[group]) - done
                log.warning(
                    "page_scores %s/%s: row group %d of %s does not decode (%s): its %d unread rows counted as %s",
                    unit.segment,
                    unit.name,
                    group,
                    redact_url(unit.source),
                    one_line(error),
                    int(ends[group]) - done,
                    Damage.CORRUPT_ROW_GROUP.value,
                )
            else:  # it reads alone: the failure was in a later group of the same batch, or passed
                for batch in rest.to_batches(max_chunksize=window):
                    yield batch, batch.column(unit.text_column).to_pylist()
            done, first = int(ends[group]), group + 1


def summarize(summaries: list[dict[str, Any]]) -> PageScoreStats:
    """A segment's totals from its files' markers: pages scored and kept per language, histograms, rates."""
    return PageScoreStats.total(PageScoreStats.from_dict(s) for s in summaries)


def kept_table(root: DataRoot, segment: str) -> pa.Table:
    """The segment's kept pages, every finished file's in file order (the kept view).

    A file of pages that did not read at all (Damage.CORRUPT_PARQUET) is finished with no outputs.
    """
    paths = [kept_path(root, segment, shard, PAGE_SCORES) for shard in finished_units(root, segment)]
    tables = [root.read_parquet(path) for path in paths if root.exists(path)]
    return pa.concat_tables(tables) if tables else pa.table({})


def kept_at_threshold(table: pa.Table, threshold: float) -> bool:
    """Whether every kept row of a scored table has score >= threshold (the stage's check)."""
    kept = table.filter(table.column("kept"))
    return kept.num_rows == 0 or pc.min(kept.column("score")).as_py() >= threshold
