"""The verdicts of the `pages` checks on one segment: the contract's columns, and rows that add up to the stats."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.parquet as pq

from cah_resources.contract import PAGES_SCHEMA, pages_path, pages_stats_path
from cah_resources.storage import DataRoot
from cah_resources.verdicts import Verdict

PAGES_CHECKS = {
    "schema": "pages.parquet has the contract's columns and types, in order.",
    "rows_add_up": "Its rows are the stats' pages, and every row's chars is the length of its text.",
}


def check_pages(root: DataRoot, segment: str) -> dict[str, Verdict]:
    path, stats_path = pages_path(root, segment), pages_stats_path(root, segment)
    if not root.exists(path):
        return {name: Verdict(False, f"{path} does not exist") for name in PAGES_CHECKS}
    with root.fs.open(path, "rb") as handle:
        schema = pq.read_schema(handle)
    if schema.remove_metadata() != PAGES_SCHEMA:
        schema_verdict = Verdict(False, f"columns differ from the contract: {schema.names}", {"columns": schema.names})
    else:
        schema_verdict = Verdict(True, "columns and types as in the contract", {"columns": len(schema.names)})
    stats = root.read_json(stats_path) if root.exists(stats_path) else None
    table = root.read_parquet(path, columns=["text", "chars"]) if schema_verdict.passed else None
    if stats is None or table is None:
        rows = Verdict(False, f"{stats_path} does not exist" if stats is None else "unreadable columns")
    else:
        lengths = pc.utf8_length(table.column("text"))
        wrong = table.num_rows - (pc.sum(pc.equal(lengths, pc.cast(table.column("chars"), lengths.type))).as_py() or 0)
        meta = {"rows": table.num_rows, "stats_pages": stats.get("pages"), "wrong_chars": wrong}
        passed = stats.get("pages") == table.num_rows and wrong == 0
        text = f"{table.num_rows} rows = the stats' pages, chars right" if passed else f"rows or chars disagree: {meta}"
        rows = Verdict(passed, text, meta)
    return {"schema": schema_verdict, "rows_add_up": rows}
