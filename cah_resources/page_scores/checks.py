"""The verdicts of the page_scores checks on one segment: scored rows = the pages, kept pages pass the threshold."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from cah_resources.contract import Damage, PageScoreStats
from cah_resources.page_scores.stage import PageScoresUnit, finished_units, segment_units
from cah_resources.storage import DataRoot
from cah_resources.verdicts import SHOWN, Verdict

PAGE_SCORES_CHECKS = {
    "scored_rows_match_pages": "Each file of the segment's pages has a finished page_scores file with as many rows.",
    "kept_pages_pass_threshold": "Every kept page has a score at or above the threshold it was scored with.",
}


def _source_rows(unit: PageScoresUnit) -> int:
    fs, path = url_to_fs(unit.source, **unit.source_options)
    with fs.open(path, "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def check_page_scores(root: DataRoot, segment: str) -> dict[str, Verdict]:
    units = segment_units(root, segment)
    done = set(finished_units(root, segment))
    problems, scored, kept, below, unreadable, damaged_rows = [], 0, 0, 0, 0, 0
    for unit in units:
        if unit.shard not in done:
            problems.append(f"file {unit.name} ({unit.source}) not scored")
            continue
        marker = PageScoreStats.from_dict(root.read_json(unit.marker))
        if marker.damage[Damage.CORRUPT_PARQUET]:  # no row of it reads: counted, with no output
            unreadable += 1
            continue
        table = root.read_parquet(unit.table, columns=["score", "kept"])
        threshold = marker.threshold
        pages, damaged = _source_rows(unit), marker.damage[Damage.CORRUPT_ROW_GROUP]
        if table.num_rows + damaged != pages:
            problems.append(f"file {unit.name}: {table.num_rows} scored rows and {damaged} damaged for {pages} pages")
        damaged_rows += damaged
        scored += table.num_rows
        is_kept = pc.fill_null(table.column("kept"), False)
        kept += pc.sum(is_kept).as_py() or 0
        passes = pc.fill_null(pc.greater_equal(table.column("score"), threshold), False)
        below += pc.sum(pc.and_(is_kept, pc.invert(passes))).as_py() or 0
    stray = sorted(done - {u.shard for u in units})
    if stray:
        problems.append(f"{len(stray)} page_scores files without a file of pages (first {stray[0]:05d})")
    match_meta = {
        "files": len(units),
        "scored_files": len(done),
        "scored_rows": scored,
        "problems": len(problems),
        Damage.CORRUPT_PARQUET.value: unreadable,
        Damage.CORRUPT_ROW_GROUP.value: damaged_rows,
    }
    damage = f" (counted as damaged: {unreadable} unreadable files, {damaged_rows} rows)"
    damage = damage if unreadable or damaged_rows else ""
    match = (
        Verdict(
            False, f"{len(problems)} files disagree; first: {problems[0]}", {**match_meta, "examples": problems[:SHOWN]}
        )
        if problems
        else Verdict(True, f"{scored} scored rows = the pages of {len(units)} files{damage}", match_meta)
    )
    kept_meta = {"pages_scored": scored, "pages_kept": kept, "kept_below_threshold": below}
    threshold_verdict = (
        Verdict(False, f"{below} of {kept} kept pages are below the threshold", kept_meta)
        if below
        else Verdict(True, f"{kept} of {scored} pages kept, all at or above the threshold", kept_meta)
    )
    return {"scored_rows_match_pages": match, "kept_pages_pass_threshold": threshold_verdict}
