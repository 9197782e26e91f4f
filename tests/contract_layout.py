"""Small hand-built segments in the contract data layout, for tests of the dataset-level code."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

from cah_resources.candidates.stage import pair_uid
from cah_resources.clip_pairs.settings import LAION_THRESHOLDS
from cah_resources.contract import (
    CANDIDATES_SCHEMA,
    CLIP_FIELDS,
    CLIP_PAIRS,
    IMAGE_SHARDS,
    candidates_path,
    candidates_stats_path,
    shard_paths,
    shard_row_schema,
    stage_folder,
)
from cah_resources.storage import DataRoot

THRESHOLDS = LAION_THRESHOLDS
SHARD_SCHEMA = shard_row_schema()
CLIP_SCHEMA = pa.schema(list(SHARD_SCHEMA) + list(CLIP_FIELDS))


@dataclass
class Pair:
    """One candidate and what later stages made of it."""

    url: str
    text: str
    category: str = "en"
    language: str = "en"
    status: str = "ok"  # download status
    similarity: float = 0.31
    nsfw: str = "UNLIKELY"
    nsfw_score: float = 0.02
    watermark_score: float = 0.1
    original_size: tuple[int, int] = (640, 480)

    @property
    def uid(self) -> str:
        return pair_uid(self.url, self.text)

    @property
    def kept(self) -> bool:
        return self.status == "ok" and self.similarity >= THRESHOLDS[self.category]


def write_segment(
    root: DataRoot,
    segment: str,
    pairs: list[Pair],
    shard_size: int = 4,
    metadata_records: int = 100,
    drops: dict[str, int] | None = None,
    stage_seconds: float = 2.0,
    finish_clip_shards: int | None = None,
) -> list[Pair]:
    """Write candidates, image_shards and clip_pairs of one segment; return pairs in uid order.

    ``finish_clip_shards`` leaves clip_pairs shards from that number on without a .done marker.
    """
    pairs = sorted(pairs, key=lambda p: p.uid)
    candidates = [
        {
            "uid": p.uid,
            "url": p.url,
            "text": p.text,
            "page_url": f"http://page.test/{segment}",
            "category": p.category,
            "language": p.language,
            "language_prob": 0.9,
            "wat_file": f"{segment}.warc.wat.gz",
            "url_attribute": "src",
        }
        for p in pairs
    ]
    root.write_parquet(candidates_path(root, segment), pa.Table.from_pylist(candidates, schema=CANDIDATES_SCHEMA))
    stats = {"metadata_records": metadata_records, "candidates": len(pairs), "task_seconds": stage_seconds}
    stats.update(drops or {})
    root.write_json(candidates_stats_path(root, segment), stats)
    for shard, start in enumerate(range(0, len(pairs), shard_size)):
        rows, clip_rows = [], []
        for offset, (pair, candidate) in enumerate(
            zip(pairs[start : start + shard_size], candidates[start : start + shard_size], strict=False)
        ):
            ok = pair.status == "ok"
            width, height = pair.original_size
            row = dict(candidate)
            row.update(
                key=f"{shard:05d}{offset:05d}",
                status=pair.status,
                http_status=200 if ok else 404,
                error_message=None if ok else pair.status,
                bytes=12345 if ok else None,
                sha256=hashlib.sha256(pair.url.encode()).hexdigest() if ok else None,
                width=256 if ok else None,
                height=256 if ok else None,
                original_width=width if ok else None,
                original_height=height if ok else None,
            )
            rows.append(row)
            if ok:
                clip_rows.append(
                    dict(
                        row,
                        similarity=pair.similarity,
                        threshold=THRESHOLDS[pair.category],
                        kept=pair.kept,
                        clip_model="tiny-test-clip",
                        nsfw=pair.nsfw,
                        nsfw_score=pair.nsfw_score,
                        watermark_score=pair.watermark_score,
                    )
                )
        paths = shard_paths(stage_folder(root, IMAGE_SHARDS, segment), shard)
        root.write_parquet(paths["parquet"], pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))
        shard_stats = {"count": len(rows), "download_seconds": stage_seconds}
        root.write_json(paths["stats"], shard_stats)
        root.write_json(paths["done"], shard_stats)
        paths = shard_paths(stage_folder(root, CLIP_PAIRS, segment), shard)
        root.write_parquet(paths["parquet"], pa.Table.from_pylist(clip_rows, schema=CLIP_SCHEMA))
        if finish_clip_shards is None or shard < finish_clip_shards:
            root.write_json(paths["done"], {"seconds": stage_seconds, "pairs": len(clip_rows)})
    return pairs
