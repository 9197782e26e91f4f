"""Checking files before a crawl: candidates (and, for WARC files, pages) of local or fsspec WAT/WARC
files, without Dagster; what `cah extract` runs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from cah_resources.candidates.image_links import CandidateFilters
from cah_resources.candidates.stage import extract_pairs, label_pairs, shared_detector
from cah_resources.contract import (
    CANDIDATES,
    CANDIDATES_SCHEMA,
    CATEGORIES,
    FORMAT_WARC,
    FORMAT_WAT,
    PAGES,
    CandidatesStats,
    DropReason,
    PagesStats,
)
from cah_resources.pages.html_page import PageRules
from cah_resources.pages.stage import read_warc
from cah_resources.storage import S3_PREFIXES, DataRoot

CANDIDATES_FILE, PAGES_FILE, COUNTS_FILE = "candidates.parquet", "pages.parquet", "counts.json"
WAT_SUFFIXES = (".wat.gz", ".wat")
COPY_CHUNK = 1 << 20


def file_format(name: str) -> str:
    """wat for ``*.wat(.gz)`` (Common Crawl's names), else warc."""
    return FORMAT_WAT if name.lower().endswith(WAT_SUFFIXES) else FORMAT_WARC


@contextmanager
def local_file(url: str, storage_options: dict | None = None) -> Iterator[str]:
    # storage_options apply to s3:// URLs (the S3 endpoint and credentials); other protocols get none.
    """A local path holding ``url``: the path itself, or a temporary copy of an fsspec URL (s3://, https://...)."""
    if "://" not in url or url.startswith("file://"):
        path = url.removeprefix("file://")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist")
        yield path
        return
    fd, path = tempfile.mkstemp(prefix="cah-extract-", suffix="-" + os.path.basename(url.rstrip("/")))
    try:
        options = (storage_options or {}) if url.startswith(S3_PREFIXES) else {}
        with os.fdopen(fd, "wb") as out, fsspec.open(url, "rb", **options) as handle:
            shutil.copyfileobj(handle, out, COPY_CHUNK)
        yield path
    finally:
        os.unlink(path)


@dataclass
class Extracted:
    candidates: pa.Table
    pages: pa.Table | None  # None when no WARC file was given
    counts: dict  # "candidates" and "pages" stats in total, and "files": each file's


def extract_files(
    urls: Sequence[str],
    filters: CandidateFilters | None = None,
    rules: PageRules | None = None,
    format: str | None = None,
    storage_options: dict | None = None,
) -> Extracted:
    """Candidates of the files in order (a pair seen in an earlier file is a duplicate), and the pages of
    the WARC files; every file's stats, and their total."""
    filters, rules = filters or CandidateFilters(), rules or PageRules()
    tables, pages, per_file = [], [], {}
    candidates_total, pages_total = CandidatesStats(), PagesStats()
    for url in urls:
        candidates, page_stats = CandidatesStats(wat_file=url, wat_files=1), PagesStats(warc_file=url, warc_files=1)
        kind = format or file_format(url)
        with local_file(url, storage_options) as path:
            if kind == FORMAT_WAT:
                pairs = extract_pairs(path, filters, candidates)
            else:
                result = read_warc(path, url, filters, rules, candidates, page_stats)
                pairs = result.pairs
                pages.append(result.pages)
        tables.append(label_pairs(pairs, url, shared_detector()))
        candidates.candidates = tables[-1].num_rows
        per_file[url] = {"format": kind, CANDIDATES: candidates.to_dict()}
        if kind != FORMAT_WAT:
            per_file[url][PAGES] = page_stats.to_dict()
            pages_total += page_stats
        candidates_total += candidates
    table = pa.concat_tables(tables) if tables else CANDIDATES_SCHEMA.empty_table()
    table, duplicates = _first_of_each_uid(table)
    candidates_total.drops[DropReason.DUPLICATE] += duplicates
    candidates_total.candidates, candidates_total.wat_file = table.num_rows, None
    pages_total.warc_file = None
    counts = {CANDIDATES: candidates_total.to_dict(), "files": per_file}
    if pages:
        counts[PAGES] = pages_total.to_dict()
    return Extracted(table, pa.concat_tables(pages) if pages else None, counts)


def _first_of_each_uid(table: pa.Table) -> tuple[pa.Table, int]:
    seen: set[str] = set()
    keep = []
    for uid in table.column("uid").to_pylist():
        keep.append(uid not in seen)
        seen.add(uid)
    return table.filter(pa.array(keep, pa.bool_())), keep.count(False)


def write_extracted(out: DataRoot, extracted: Extracted) -> list[str]:
    """``candidates.parquet``, ``pages.parquet`` (WARC files only) and ``counts.json`` under ``out``."""
    written = [out.path(CANDIDATES_FILE)]
    out.write_parquet(written[0], extracted.candidates)
    if extracted.pages is not None:
        written.append(out.path(PAGES_FILE))
        out.write_parquet(written[-1], extracted.pages)
    written.append(out.path(COUNTS_FILE))
    out.write_json(written[-1], extracted.counts)
    return written


def summary(extracted: Extracted) -> str:
    """One line a person reads: files, candidates by category, pages, what was dropped most, and damage."""
    candidates = CandidatesStats.from_dict(extracted.counts[CANDIDATES])
    pages = PagesStats.from_dict(extracted.counts.get(PAGES, {}))
    categories = ", ".join(
        f"{c} {pc.sum(pc.equal(extracted.candidates.column('category'), c)).as_py() or 0}" for c in CATEGORIES
    )
    drops = [(n, f"{CandidatesStats.DROP_PREFIX}{r}") for r, n in candidates.drops.items() if n]
    drops += [(n, f"{PagesStats.DROP_PREFIX}{r}") for r, n in pages.drops.items() if n]
    shown = ", ".join(f"{k} {v}" for v, k in sorted(drops, reverse=True)[:5]) or "none"
    rows = f", {extracted.pages.num_rows} pages" if extracted.pages is not None else ""
    # One pass reads a WARC file for both outputs: a damaged record is counted by each, shown once.
    damage = {kind: max(candidates.damage[kind], pages.damage[kind]) for kind in candidates.damage | pages.damage}
    damaged = ", ".join(f"{kind} {n}" for kind, n in sorted(damage.items(), key=lambda kv: -kv[1]) if n)
    return (
        f"{len(extracted.counts['files'])} file(s): {extracted.candidates.num_rows} candidates ({categories}){rows}; "
        f"drops: {shown}" + (f"; damaged, skipped: {damaged}" if damaged else "")
    )
