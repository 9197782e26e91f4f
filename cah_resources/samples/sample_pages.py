"""A generated Parquet dataset of web pages, FineWeb-like columns, for tests, the demo and benchmarks."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from cah_resources.samples.tiny_text_classifier.texts import LANGUAGES, Page, pages

# FineWeb's own column names for what a page has: its text, id, URL and detected language.
PAGE_DATASET_SCHEMA = pa.schema(
    [
        ("text", pa.string()),
        ("id", pa.string()),
        ("url", pa.string()),
        ("language", pa.string()),
        ("value", pa.float32()),  # the educational value the page was generated with (0-5): the truth
    ]
)


def pages_table(rows: list[Page], first_id: int = 0) -> pa.Table:
    return pa.table(
        {
            "text": [p.text for p in rows],
            "id": [f"<urn:uuid:{first_id + i:08d}>" for i in range(len(rows))],
            "url": [p.url for p in rows],
            "language": [p.language for p in rows],
            "value": [p.value for p in rows],
        },
        schema=PAGE_DATASET_SCHEMA,
    )


def write_page_dataset(
    folder: str,
    files: int,
    pages_per_file: int,
    seed: int = 0,
    languages: tuple[str, ...] = LANGUAGES,
    storage_options: dict[str, Any] | None = None,
    row_group_size: int = 1024,
) -> list[str]:
    """``files`` Parquet files ``00000.parquet``... of generated pages under ``folder`` (any fsspec URL); their URLs."""
    fs, base = url_to_fs(folder, **(storage_options or {}))
    fs.makedirs(base, exist_ok=True)
    written = []
    for i in range(files):
        rows = pages(pages_per_file, seed=seed * 1000 + i, languages=languages)
        path = f"{base.rstrip('/')}/{i:05d}.parquet"
        with fs.open(path, "wb") as handle:
            pq.write_table(pages_table(rows, i * pages_per_file), handle, row_group_size=row_group_size)
        written.append(f"{folder.rstrip('/')}/{i:05d}.parquet")
    return written
