"""Small helpers turning stage stats into the Dagster metadata people read in the UI."""

from __future__ import annotations

from typing import Iterable, Mapping

import dagster as dg


def markdown_table(rows: Iterable[Mapping[str, object]], columns: list[str], limit: int = 10) -> dg.MarkdownMetadataValue:
    def cell(value: object) -> str:
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 120 else text[:117] + "..."

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in list(rows)[:limit]:
        lines.append("| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def counts_table(counts: Mapping[str, int], title: str = "reason") -> dg.MarkdownMetadataValue:
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return markdown_table(({title: k, "count": v} for k, v in ordered), [title, "count"], limit=len(ordered))


def rate(amount: float, seconds: float) -> float:
    return round(amount / seconds, 2) if seconds > 0 else 0.0
