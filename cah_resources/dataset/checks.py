"""The checks' verdicts on one segment of each stage, as plain data: passed or not, why, and the counts behind it."""

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cah_resources.candidates.stage import output_paths
from cah_resources.contract import (
    CANDIDATES_SCHEMA,
    CATEGORIES,
    CLIP_PAIRS,
    IMAGE_SHARDS,
    CandidatesStats,
    DownloadStatus,
    ShardStats,
    list_shards,
    shard_paths,
    stage_folder,
)
from cah_resources.image_shards.shard_writer import read_tar_names
from cah_resources.storage import DataRoot

UID = re.compile(r"^[0-9a-f]{32}$")
TAR_SUFFIXES = (".jpg", ".txt", ".json")
SHOWN = 5  # offending values shown in a check's metadata


@dataclass(frozen=True)
class Verdict:
    """What a check found on one segment: passed or not, why in one line, and the counts behind it."""

    passed: bool
    description: str
    metadata: dict = field(default_factory=dict)


def _missing(path: str, names: tuple[str, ...]) -> dict[str, Verdict]:
    return {name: Verdict(False, f"{path} does not exist") for name in names}


# --- candidates ----------------------------------------------------------------------------------

CANDIDATES_CHECKS = {
    "schema": "The parquet has exactly the contract's columns and types, and every uid is 32 hex chars.",
    "unique_uids": "No uid occurs twice, and rows are sorted by uid (shard rows depend on that order).",
    "valid_categories": "Every category is en / multi / nolang and agrees with the language code and probability.",
    "drops_add_up": "stats.json adds up: links seen = candidates + every drop, category counts = the rows'.",
}


def check_candidates(root: DataRoot, segment: str) -> dict[str, Verdict]:
    table_path, stats_path = output_paths(root, segment)
    if not root.exists(table_path):
        return _missing(table_path, tuple(CANDIDATES_CHECKS))
    with root.fs.open(table_path, "rb") as handle:
        schema = pq.read_schema(handle)
    verdicts = {"schema": _schema_verdict(schema)}
    present = [name for name in ("uid", "category", "language", "language_prob") if name in schema.names]
    table = root.read_parquet(table_path, columns=present)
    verdicts["schema"] = _uid_format_verdict(table, verdicts["schema"])
    verdicts["unique_uids"] = _unique_sorted_verdict(table)
    verdicts["valid_categories"] = _categories_verdict(table)
    stats = root.read_json(stats_path) if root.exists(stats_path) else None
    verdicts["drops_add_up"] = _drops_verdict(table, stats, stats_path)
    return verdicts


def _schema_verdict(schema: pa.Schema) -> Verdict:
    expected = {f.name: f.type for f in CANDIDATES_SCHEMA}
    found = {f.name: f.type for f in schema}
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    mistyped = [f"{n}: {found[n]} (want {t})" for n, t in expected.items() if n in found and found[n] != t]
    problems = [
        f"missing {missing}" if missing else "",
        f"unexpected {extra}" if extra else "",
        f"mistyped {mistyped}" if mistyped else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        return Verdict(False, "schema differs from the contract: " + "; ".join(problems), {"columns": list(found)})
    if schema.names != CANDIDATES_SCHEMA.names:
        return Verdict(False, f"columns are out of order: {schema.names}", {"columns": list(found)})
    return Verdict(True, "columns and types as in the contract", {"columns": len(found)})


def _uid_format_verdict(table: pa.Table, schema_verdict: Verdict) -> Verdict:
    if not schema_verdict.passed or "uid" not in table.column_names:
        return schema_verdict
    uids = table.column("uid")
    bad = pc.invert(pc.fill_null(pc.match_substring_regex(uids, UID.pattern), False))
    count = pc.sum(bad).as_py() or 0
    if count:
        shown = uids.filter(bad).slice(0, SHOWN).to_pylist()
        return Verdict(
            False,
            f"{count} uids are not 32 lowercase hex chars (e.g. {shown[0]!r})",
            {"bad_uids": count, "examples": shown},
        )
    return Verdict(
        True, f"columns and types as in the contract; {table.num_rows} well-formed uids", {"rows": table.num_rows}
    )


def _unique_sorted_verdict(table: pa.Table) -> Verdict:
    if "uid" not in table.column_names:
        return Verdict(False, "no uid column")
    uids = table.column("uid").combine_chunks()
    if len(uids) < 2:
        return Verdict(True, f"{len(uids)} rows", {"rows": len(uids)})
    previous, current = uids.slice(0, len(uids) - 1), uids.slice(1)
    duplicates = pc.sum(pc.equal(previous, current)).as_py() or 0
    unsorted = pc.sum(pc.less(current, previous)).as_py() or 0
    if unsorted:
        # Duplicates need not be neighbours in an unsorted column: count them the slow way.
        duplicates = len(uids) - pc.count_distinct(uids).as_py()
    meta = {"rows": len(uids), "duplicate_uids": duplicates, "out_of_order": unsorted}
    if duplicates or unsorted:
        return Verdict(False, f"{duplicates} duplicate uids, {unsorted} rows out of uid order", meta)
    return Verdict(True, f"{len(uids)} distinct uids in order", meta)


def _categories_verdict(table: pa.Table) -> Verdict:
    needed = {"category", "language", "language_prob"}
    if not needed <= set(table.column_names):
        return Verdict(False, f"missing columns {sorted(needed - set(table.column_names))}")
    category, language, prob = (table.column(n) for n in ("category", "language", "language_prob"))
    unknown = pc.invert(pc.fill_null(pc.is_in(category, value_set=pa.array(CATEGORIES)), False))
    en_not_en = pc.and_(pc.equal(category, "en"), pc.not_equal(language, "en"))
    multi_wrong = pc.and_(pc.equal(category, "multi"), pc.is_in(language, value_set=pa.array(["en", "und"])))
    prob_out = pc.invert(pc.fill_null(pc.and_(pc.greater_equal(prob, 0.0), pc.less_equal(prob, 1.0)), False))
    counts = {
        "unknown_category": pc.sum(unknown).as_py() or 0,
        "en_with_other_language": pc.sum(pc.fill_null(en_not_en, True)).as_py() or 0,
        "multi_with_en_or_und": pc.sum(pc.fill_null(multi_wrong, True)).as_py() or 0,
        "probability_outside_0_1": pc.sum(prob_out).as_py() or 0,
    }
    per_category = {str(k): v for k, v in Counter(category.to_pylist()).items()}
    bad = {k: v for k, v in counts.items() if v}
    if bad:
        examples = (
            sorted(set(category.filter(unknown).slice(0, SHOWN).to_pylist())) if counts["unknown_category"] else []
        )
        suffix = f" (unknown: {examples})" if examples else ""
        return Verdict(
            False, "invalid rows: " + ", ".join(f"{v} {k}" for k, v in bad.items()) + suffix, {**counts, **per_category}
        )
    return Verdict(True, ", ".join(f"{per_category.get(c, 0)} {c}" for c in CATEGORIES), {**counts, **per_category})


def _drops_verdict(table: pa.Table, on_disk: dict | None, stats_path: str) -> Verdict:
    if on_disk is None:
        return Verdict(False, f"{stats_path} does not exist")
    stats = CandidatesStats.from_dict(on_disk)
    rows, drops = table.num_rows, sum(stats.drops.values())
    actual = Counter(table.column("category").to_pylist()) if "category" in table.column_names else Counter()
    problems = []
    if stats.candidates != rows:
        problems.append(f"stats say {stats.candidates} candidates, the parquet has {rows} rows")
    for category in CATEGORIES:
        if stats.categories.get(category) != actual.get(category, 0):
            problems.append(
                f"stats say {stats.categories.get(category)} {category}, the rows {actual.get(category, 0)}"
            )
    if stats.links_seen != rows + drops:
        problems.append(f"{stats.links_seen} links seen but {rows} candidates + {drops} drops")
    meta = dict(links_seen=stats.links_seen, candidates=rows, drops=drops)
    if problems:
        return Verdict(False, "; ".join(problems), meta)
    return Verdict(True, f"{stats.links_seen} links = {rows} candidates + {drops} drops", meta)


# --- image_shards --------------------------------------------------------------------------------

IMAGE_SHARDS_CHECKS = {
    "rows_match_candidates": (
        "Every shard is finished, and its parquet rows are the candidates' rows in order, keyed by shard and row."
    ),
    "tar_members_match_ok_rows": "Each tar holds key.jpg, key.txt and key.json for exactly the parquet's ok rows.",
    "stats_agree": (
        "Each NNNNN_stats.json and .done marker agrees with its parquet: count, successes, failures, statuses."
    ),
}


def run_here(fn: Callable, units: list, **kwargs) -> list:
    """Runs ``fn(unit, **kwargs)`` for each unit in this process; Dagster's checks pass the compute engine's instead."""
    return [fn(unit, **kwargs) for unit in units]


def _shard_numbers(root: DataRoot, folder: str) -> tuple[list[int], set[int]]:
    """Shards that have a parquet, and shards that have a .done marker."""
    listing = list_shards(root, folder)
    done = {int(name) for name in listing.finished}
    return sorted({int(name) for name in listing.written} | done), done


def check_image_shards(root: DataRoot, segment: str, run: Callable = run_here) -> dict[str, Verdict]:
    """``run`` maps the tar reads: the run process reads only parquet, stats and markers from the store."""
    candidates_path = output_paths(root, segment)[0]
    if not root.exists(candidates_path):
        return _missing(candidates_path, tuple(IMAGE_SHARDS_CHECKS))
    expected_uids = root.read_parquet(candidates_path, columns=["uid"]).column("uid").to_pylist()
    folder = stage_folder(root, IMAGE_SHARDS, segment)
    shards, done = _shard_numbers(root, folder)
    tables = {}
    for shard in shards:
        path = shard_paths(folder, shard)["parquet"]
        if root.exists(path):
            tables[shard] = root.read_parquet(path, columns=["uid", "key", "status"])
    return {
        "rows_match_candidates": _rows_verdict(expected_uids, shards, done, tables),
        "tar_members_match_ok_rows": _tar_verdict(root, folder, tables, run),
        "stats_agree": _stats_verdict(root, folder, tables),
    }


def _rows_verdict(expected_uids: list[str], shards: list[int], done: set[int], tables: dict[int, pa.Table]) -> Verdict:
    problems = []
    unfinished = [s for s in shards if s not in done or s not in tables]
    if unfinished:
        problems.append(f"{len(unfinished)} shards unfinished (first {unfinished[0]:05d})")
    if shards != list(range(len(shards))):
        problems.append(f"shard numbers are not 0..{len(shards) - 1}: {shards[:SHOWN]}")
    sizes = [tables[s].num_rows for s in shards if s in tables]
    if len(set(sizes[:-1])) > 1 or (sizes and len(sizes) > 1 and sizes[-1] > sizes[0]):
        problems.append(f"shards hold unequal slices: {sizes[:SHOWN]}")
    uids, keys_ok = [], True
    for shard in shards:
        if shard in tables:
            uids.extend(tables[shard].column("uid").to_pylist())
            keys = tables[shard].column("key").to_pylist()
            keys_ok &= keys == [f"{shard:05d}{row:05d}" for row in range(len(keys))]
    if not keys_ok:
        problems.append("sample keys are not shard number + row number")
    if len(uids) != len(expected_uids):
        problems.append(f"{len(uids)} shard rows for {len(expected_uids)} candidates")
    elif uids != expected_uids:
        first = next(i for i, (a, b) in enumerate(zip(uids, expected_uids, strict=False)) if a != b)
        problems.append(f"shard rows differ from the candidates from row {first} on")
    meta = {"candidates": len(expected_uids), "shard_rows": len(uids), "shards": len(shards), "finished": len(done)}
    if problems:
        return Verdict(False, "; ".join(problems), meta)
    return Verdict(True, f"{len(uids)} rows in {len(shards)} finished shards, same order as the candidates", meta)


def _tar_verdict(root: DataRoot, folder: str, tables: dict[int, pa.Table], run: Callable) -> Verdict:
    missing, extra, duplicated, unreadable, members = 0, 0, 0, [], 0
    examples: list[str] = []
    shards = sorted(tables)
    listings = run(read_tar_names, [shard_paths(folder, shard)["tar"] for shard in shards], root=root)
    for shard, (names, error) in zip(shards, listings, strict=False):
        table = tables[shard]
        ok_keys = table.filter(pc.equal(table.column("status"), DownloadStatus.OK.value)).column("key").to_pylist()
        expected = {key + suffix for key in ok_keys for suffix in TAR_SUFFIXES}
        if names is None:
            unreadable.append(f"{shard:05d}: {error}")
            continue
        found = set(names)
        members += len(names)
        duplicated += len(names) - len(found)
        missing += len(expected - found)
        extra += len(found - expected)
        examples.extend(sorted(expected - found)[:SHOWN] + sorted(found - expected)[:SHOWN])
    meta = {
        "members": members,
        "missing": missing,
        "unexpected": extra,
        "duplicated": duplicated,
        "unreadable": len(unreadable),
    }
    if missing or extra or duplicated or unreadable:
        parts = [
            f"{missing} missing",
            f"{extra} unexpected",
            f"{duplicated} duplicated",
            f"{len(unreadable)} unreadable tars",
        ]
        detail = unreadable[0] if unreadable else ", ".join(examples[:SHOWN])
        return Verdict(
            False,
            "tar members differ from the ok rows: " + ", ".join(parts) + f" ({detail})",
            {**meta, "examples": examples[:SHOWN]},
        )
    return Verdict(True, f"{members} members = 3 per ok row", meta)


def _stats_verdict(root: DataRoot, folder: str, tables: dict[int, pa.Table]) -> Verdict:
    problems = []
    for shard, table in sorted(tables.items()):
        statuses = Counter(table.column("status").to_pylist())
        ok = statuses[DownloadStatus.OK]
        want = ShardStats(count=table.num_rows, successes=ok, failed=table.num_rows - ok, status_counts=statuses)
        for path in (shard_paths(folder, shard)[kind] for kind in ("stats", "done")):
            name = path.rsplit("/", 1)[-1]
            if not root.exists(path):
                problems.append(f"{name} missing")
                continue
            on_disk = root.read_json(path)
            stats = ShardStats.from_dict(on_disk)
            wrong = [k for k in ShardStats.FROM_ROWS if k not in on_disk or getattr(stats, k) != getattr(want, k)]
            if wrong:
                shown = ", ".join(f"{k}={on_disk.get(k)} (rows say {getattr(want, k)})" for k in wrong)
                problems.append(f"{name}: {shown}")
    meta = {"shards": len(tables), "disagreements": len(problems)}
    if problems:
        return Verdict(
            False, f"{len(problems)} disagreements; first: {problems[0]}", {**meta, "examples": problems[:SHOWN]}
        )
    return Verdict(True, f"stats and markers of {len(tables)} shards agree with their parquet", meta)


# --- clip_pairs ----------------------------------------------------------------------------------

CLIP_PAIRS_CHECKS = {
    "kept_rows_pass_threshold": "Every kept pair has a similarity at or above its category's threshold.",
    "scored_rows_match_ok_rows": (
        "Each finished image shard has a finished clip_pairs shard scoring exactly its ok rows."
    ),
}


def check_clip_pairs(root: DataRoot, segment: str) -> dict[str, Verdict]:
    image_folder, clip_folder = stage_folder(root, IMAGE_SHARDS, segment), stage_folder(root, CLIP_PAIRS, segment)
    _, image_done = _shard_numbers(root, image_folder)
    clip_shards, clip_done = _shard_numbers(root, clip_folder)
    below, kept, scored, problems = 0, 0, 0, []
    for shard in clip_shards:
        path = shard_paths(clip_folder, shard)["parquet"]
        if not root.exists(path):
            continue
        table = root.read_parquet(path, columns=["key", "similarity", "threshold", "kept"])
        scored += table.num_rows
        is_kept = pc.fill_null(table.column("kept"), False)
        kept += pc.sum(is_kept).as_py() or 0
        passes = pc.fill_null(pc.greater_equal(table.column("similarity"), table.column("threshold")), False)
        below += pc.sum(pc.and_(is_kept, pc.invert(passes))).as_py() or 0
    for shard in sorted(image_done):
        ok_keys = sorted(
            r["key"]
            for r in root.read_parquet(
                shard_paths(image_folder, shard)["parquet"], columns=["key", "status"]
            ).to_pylist()
            if r["status"] == DownloadStatus.OK
        )
        path = shard_paths(clip_folder, shard)["parquet"]
        if shard not in clip_done or not root.exists(path):
            problems.append(f"shard {shard:05d} not scored")
            continue
        keys = sorted(root.read_parquet(path, columns=["key"]).column("key").to_pylist())
        if keys != ok_keys:
            problems.append(
                f"shard {shard:05d}: {len(keys)} scored rows for {len(ok_keys)} ok rows"
                + ("" if len(keys) != len(ok_keys) else " (different keys)")
            )
    stray = sorted(set(clip_shards) - image_done)
    if stray:
        problems.append(f"{len(stray)} clip_pairs shards without a finished image shard (first {stray[0]:05d})")
    threshold_meta = {"scored": scored, "kept": kept, "kept_below_threshold": below}
    threshold = (
        Verdict(False, f"{below} of {kept} kept pairs are below their threshold", threshold_meta)
        if below
        else Verdict(True, f"{kept} of {scored} pairs kept, all at or above their threshold", threshold_meta)
    )
    match_meta = {"image_shards": len(image_done), "clip_shards": len(clip_done), "problems": len(problems)}
    match = (
        Verdict(
            False,
            f"{len(problems)} shards disagree; first: {problems[0]}",
            {**match_meta, "examples": problems[:SHOWN]},
        )
        if problems
        else Verdict(True, f"{scored} scored rows = the ok rows of {len(image_done)} shards", match_meta)
    )
    return {"kept_rows_pass_threshold": threshold, "scored_rows_match_ok_rows": match}
