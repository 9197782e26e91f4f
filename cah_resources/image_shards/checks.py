"""The verdicts of the image_shards checks on one segment: rows match the candidates, tars, stats."""

from collections import Counter
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from cah_resources.candidates.stage import output_paths
from cah_resources.contract import (
    IMAGE_SHARDS,
    DownloadStatus,
    ShardStats,
    shard_paths,
    stage_folder,
)
from cah_resources.image_shards.shard_writer import read_tar_names
from cah_resources.storage import DataRoot
from cah_resources.verdicts import SHOWN, Verdict, missing, run_here, shard_numbers

TAR_SUFFIXES = (".jpg", ".txt", ".json")

IMAGE_SHARDS_CHECKS = {
    "rows_match_candidates": (
        "Every shard is finished, and its parquet rows are the candidates' rows in order, keyed by shard and row."
    ),
    "tar_members_match_ok_rows": "Each tar holds key.jpg, key.txt and key.json for exactly the parquet's ok rows.",
    "stats_agree": (
        "Each NNNNN_stats.json and .done marker agrees with its parquet: count, successes, failures, statuses."
    ),
}


def check_image_shards(root: DataRoot, segment: str, run: Callable = run_here) -> dict[str, Verdict]:
    """``run`` maps the tar reads: the run process reads only parquet, stats and markers from the store."""
    candidates_path = output_paths(root, segment)[0]
    if not root.exists(candidates_path):
        return missing(candidates_path, tuple(IMAGE_SHARDS_CHECKS))
    expected_uids = root.read_parquet(candidates_path, columns=["uid"]).column("uid").to_pylist()
    folder = stage_folder(root, IMAGE_SHARDS, segment)
    shards, done = shard_numbers(root, folder)
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
