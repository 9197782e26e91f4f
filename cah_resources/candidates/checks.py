"""The verdicts of the candidates checks on one segment: schema, unique sorted uids, categories, drops."""

import re
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cah_resources.candidates.stage import output_paths
from cah_resources.contract import (
    CANDIDATES_SCHEMA,
    CATEGORIES,
    CandidatesStats,
)
from cah_resources.storage import DataRoot
from cah_resources.verdicts import SHOWN, Verdict, missing

UID = re.compile(r"^[0-9a-f]{32}$")

CANDIDATES_CHECKS = {
    "schema": "The parquet has exactly the contract's columns and types, and every uid is 32 hex chars.",
    "unique_uids": "No uid occurs twice, and rows are sorted by uid (shard rows depend on that order).",
    "valid_categories": "Every category is en / multi / nolang and agrees with the language code and probability.",
    "drops_add_up": "stats.json adds up: links seen = candidates + every drop, category counts = the rows'.",
}


def check_candidates(root: DataRoot, segment: str) -> dict[str, Verdict]:
    table_path, stats_path = output_paths(root, segment)
    if not root.exists(table_path):
        return missing(table_path, tuple(CANDIDATES_CHECKS))
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
