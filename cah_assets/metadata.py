"""Small helpers turning stage stats into the Dagster metadata people read in the UI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import dagster as dg

from cah_resources.contract import MetadataTable, Stats

CELL_CHARS = 120  # longer text (captions, URLs) is cut in tables: a sample is for eyeballing


def _cell(value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value).replace("\n", " ")
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 3] + "..."


def _column_type(values: Iterable[object]) -> str:
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {bool}:
        return "bool"
    if kinds and kinds <= {int}:
        return "int"
    if kinds and kinds <= {int, float}:
        return "float"
    return "string"


def rows_table(rows: Iterable[Mapping[str, object]], columns: Sequence[str], limit: int = 10) -> dg.TableMetadataValue:
    """The first ``limit`` rows as Dagster table metadata, ``columns`` in order, typed from their values."""
    cells = [{c: _cell(row.get(c)) for c in columns} for row in list(rows)[:limit]]
    schema = dg.TableSchema(columns=[dg.TableColumn(c, _column_type(r[c] for r in cells)) for c in columns])
    return dg.MetadataValue.table(records=[dg.TableRecord(r) for r in cells], schema=schema)


def counts_table(counts: Mapping[str, int], title: str = "reason") -> dg.TableMetadataValue:
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return rows_table(({title: k, "count": v} for k, v in ordered), [title, "count"], limit=len(ordered))


def rate(amount: float, seconds: float) -> float:
    return round(amount / seconds, 2) if seconds > 0 else 0.0


def stats_metadata(stats: Stats) -> dict[str, object]:
    """``stats.metadata()`` for Dagster: every stat under its one name, its tables as Dagster tables."""
    return {
        name: rows_table(value.rows, value.columns, limit=max(len(value.rows), 10))
        if isinstance(value, MetadataTable)
        else value
        for name, value in stats.metadata().items()
    }
