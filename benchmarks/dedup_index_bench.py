"""Speed of the global dedup index's claim against a plain bulk insert into the same backend.

    .venv/bin/python benchmarks/dedup_index_bench.py                      # SQLite and Postgres
    .venv/bin/python benchmarks/dedup_index_bench.py --uids 50000 --backends sqlite

For each backend, every round starts from an index that already holds ``--uids`` claims of
another segment and times, on the same data:

- reference: a plain bulk insert of ``--uids`` new uids into a table of the same shape (uid
  primary key + segment id) holding as many rows, by the backend's fastest plain path (uids
  sorted, SQLite executemany in one transaction, Postgres COPY): no conflict handling, no
  read-back, no batches.
- claim new: ``DedupIndex.claim`` of ``--uids`` new uids (the first segment of a crawl).
- claim seen: ``claim`` of uids another segment owns (a later segment full of duplicates).
- retry: ``claim`` of the same uids by the segment that owns them (a retried partition).

Figures are uids per wall second (the database server works in its own process) and each
claim's time as a multiple of the reference's, best of ``--repeats`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import io
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cah_resources.dataset.dedup_index import DedupIndex

POSTGRES_URL = os.environ.get("CAH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def random_uids(n: int) -> list[str]:
    return [os.urandom(16).hex() for _ in range(n)]


def bulk_insert_sqlite(path: str, table: str, base: list[str], uids: list[str]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"CREATE TABLE {table} (uid BLOB PRIMARY KEY, segment_id INTEGER NOT NULL) WITHOUT ROWID")
    conn.execute(f"CREATE INDEX {table}_by_segment ON {table} (segment_id)")
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO {table} VALUES (?, 1)", ((bytes.fromhex(u),) for u in base))
    conn.execute("COMMIT")
    started = time.perf_counter()
    conn.execute("BEGIN")
    rows = ((bytes.fromhex(u),) for u in sorted(uids))
    conn.executemany(f"INSERT INTO {table} VALUES (?, 2)", rows)
    conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.execute(f"DROP TABLE {table}")
    conn.close()
    return seconds


def bulk_insert_postgres(url: str, table: str, base: list[str], uids: list[str]) -> float:
    import psycopg2

    conn = psycopg2.connect(url)
    cursor = conn.cursor()
    cursor.execute(f"CREATE TABLE {table} (uid BYTEA PRIMARY KEY, segment_id INTEGER NOT NULL)")
    cursor.execute(f"CREATE INDEX {table}_by_segment ON {table} (segment_id)")

    def copy(values: list[str], segment: int) -> None:
        text = "".join(f"\\\\x{u}\t{segment}\n" for u in values)
        cursor.copy_expert(f"COPY {table} (uid, segment_id) FROM STDIN", io.StringIO(text))
        conn.commit()

    copy(base, 1)
    started = time.perf_counter()
    copy(sorted(uids), 2)
    seconds = time.perf_counter() - started
    cursor.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()
    return seconds


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def one_round(backend: str, n: int, folder: str) -> dict[str, float]:
    base, fresh = random_uids(n), random_uids(n)
    table = f"bench_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        path = f"{folder}/{table}.sqlite"
        reference = bulk_insert_sqlite(f"{folder}/ref_{table}.sqlite", table, base, fresh)
        index = DedupIndex(f"sqlite:///{path}", table=table)
    else:
        reference = bulk_insert_postgres(POSTGRES_URL, f"ref_{table}", base, fresh)
        index = DedupIndex(POSTGRES_URL, table=table)
    try:
        index.claim("CC-BENCH_00000", base)
        times = {
            "reference": reference,
            "claim new": timed(lambda: index.claim("CC-BENCH_00001", fresh)),
            "claim seen": timed(lambda: index.claim("CC-BENCH_00002", base)),
            "retry": timed(lambda: index.claim("CC-BENCH_00001", fresh)),
        }
    finally:
        index.drop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uids", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    best: dict[str, dict[str, float]] = {b: {} for b in backends}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for backend in backends:
                for name, seconds in one_round(backend, args.uids, folder).items():
                    best[backend][name] = min(seconds, best[backend].get(name, float("inf")))
    print(f"dedup index, {args.uids:,} uids onto {args.uids:,} claimed, best of {args.repeats}")
    for backend in backends:
        reference = best[backend]["reference"]
        print(f"  {backend}: reference bulk insert {args.uids / reference:,.0f} uids/s")
        for name in ("claim new", "claim seen", "retry"):
            seconds = best[backend][name]
            print(
                f"    {name:<10} {args.uids / seconds:>10,.0f} uids/s   {seconds / reference:.2f}x the reference's time"
            )


if __name__ == "__main__":
    main()
