"""The verdicts of the clip_pairs checks on one segment: kept rows pass their threshold, scored = ok rows."""

import pyarrow.compute as pc

from cah_resources.contract import (
    CLIP_PAIRS,
    IMAGE_SHARDS,
    DownloadStatus,
    shard_paths,
    stage_folder,
)
from cah_resources.crawl.segments import webdataset_tars
from cah_resources.storage import DataRoot
from cah_resources.verdicts import SHOWN, Verdict, shard_numbers

CLIP_PAIRS_CHECKS = {
    "kept_rows_pass_threshold": "Every kept pair has a similarity at or above its category's threshold.",
    "scored_rows_match_ok_rows": (
        "Each finished image shard has a finished clip_pairs shard scoring exactly its ok rows."
    ),
}


def check_clip_pairs(root: DataRoot, segment: str) -> dict[str, Verdict]:
    image_folder, clip_folder = stage_folder(root, IMAGE_SHARDS, segment), stage_folder(root, CLIP_PAIRS, segment)
    tars = webdataset_tars(root, segment)
    # A registered webdataset's tars stand for the image shards; every sample of a tar is a row.
    image_done = set(range(len(tars))) if tars is not None else shard_numbers(root, image_folder)[1]
    clip_shards, clip_done = shard_numbers(root, clip_folder)
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
        path = shard_paths(clip_folder, shard)["parquet"]
        if shard not in clip_done or not root.exists(path):
            problems.append(f"shard {shard:05d} not scored")
            continue
        if tars is not None:
            continue
        ok_keys = sorted(
            r["key"]
            for r in root.read_parquet(
                shard_paths(image_folder, shard)["parquet"], columns=["key", "status"]
            ).to_pylist()
            if r["status"] == DownloadStatus.OK
        )
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
