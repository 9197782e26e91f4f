"""The global dedup index: which segment owns each (url, text) pair, in SQLite or Postgres."""

from __future__ import annotations

import io
import os
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import dagster as dg

from cah_resources.redaction import redact_url
from cah_resources.storage import DataRoot

DEFAULT_TABLE = "dedup_claims"
DEFAULT_BATCH_SIZE = 10_000
# Where the default SQLite index lives under a local data root.
DEFAULT_SQLITE_PARTS = ("dedup", "index.sqlite")

_UID = re.compile(r"^[0-9a-f]{32}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
# A writer waits this long for another segment's batch before giving up; a batch holds the
# SQLite write lock for tens of milliseconds, so only a stuck process comes near it.
_SQLITE_LOCK_WAIT_S = 300.0
_PG_TRANSIENT_RETRIES = 5

T = TypeVar("T")


class DedupIndexError(RuntimeError):
    """The dedup index cannot be used as configured (bad URL, unreachable server, locked file)."""


def _sqlite_path(url: str) -> str:
    # SQLAlchemy's convention: sqlite:///relative/path, sqlite:////absolute/path.
    path = url[len("sqlite:///") :]
    if not path or path == ":memory:":
        raise DedupIndexError(
            f"dedup index URL {url!r} names no file; "
            "use sqlite:///relative/path or sqlite:////absolute/path"
        )
    return path


def _dialect_of(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgres"
    raise DedupIndexError(
        f"dedup index URL {redact_url(url)!r} must start with sqlite:/// or postgresql://"
    )


def _uid_bytes(uid: str) -> bytes:
    if not isinstance(uid, str) or not _UID.match(uid):
        raise ValueError(
            f"uid {uid!r} is not 32 lowercase hex characters (blake2b-128 of url + NUL + text)"
        )
    return bytes.fromhex(uid)


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class DedupIndex:
    """(url, text) uids with the segment that claimed each; picklable, connects per call.

    ``url`` is ``sqlite:///path/to/index.sqlite`` or ``postgresql://user:pass@host:port/db``.
    Both dialects run the same claim SQL; only table types and bulk loading differ.
    """

    url: str
    table: str = DEFAULT_TABLE
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        _dialect_of(self.url)
        if not _IDENTIFIER.match(self.table):
            raise DedupIndexError(
                f"dedup index table name {self.table!r} must be letters, digits and _ (max 41)"
            )
        if self.batch_size < 1:
            raise DedupIndexError(f"dedup index batch_size must be >= 1, not {self.batch_size}")

    def __repr__(self) -> str:
        return f"DedupIndex(url={redact_url(self.url)!r}, table={self.table!r})"

    @property
    def dialect(self) -> str:
        return _dialect_of(self.url)

    # -- public API -------------------------------------------------------------------------

    def claim(self, segment_key: str, uids: Iterable[str]) -> set[str]:
        """Claim ``uids`` for ``segment_key``; return those it owns.

        Owned = newly claimed now + claimed earlier by this same segment, so a retry of a
        segment gets back exactly its earlier claims. A uid another segment claimed first is
        left out. Each batch inserts and reads back in one transaction, so of two segments
        racing for a uid exactly one owns it.
        """
        _check_segment_key(segment_key)
        unique = sorted(set(uids))
        owned: set[str] = set()
        if not unique:
            return owned
        encoded = [_uid_bytes(u) for u in unique]
        with self._session() as session:
            segment_id = session.segment_id(segment_key)
            for batch in _batches(encoded, self.batch_size):
                rows = session.in_write_transaction(
                    lambda batch=batch: session.claim_batch(segment_id, batch)
                )
                owned.update(uid.hex() for uid in rows)
        return owned

    def owners(self, uids: Iterable[str]) -> dict[str, str]:
        """The owning segment of every claimed uid among ``uids`` (unclaimed ones are absent)."""
        unique = sorted(set(uids))
        found: dict[str, str] = {}
        if not unique:
            return found
        encoded = [_uid_bytes(u) for u in unique]
        with self._session() as session:
            for batch in _batches(encoded, self.batch_size):
                rows = session.in_read_transaction(lambda batch=batch: session.owners_batch(batch))
                found.update((bytes(uid).hex(), key) for uid, key in rows)
        return found

    def release(self, segment_key: str) -> int:
        """Drop every claim of ``segment_key`` (its partition was deleted); return how many."""
        _check_segment_key(segment_key)
        with self._session() as session:
            return session.in_write_transaction(lambda: session.release(segment_key))

    def count(self, segment_key: str | None = None) -> int:
        """Number of claimed uids, of one segment or of all."""
        with self._session() as session:
            return session.count(segment_key)

    def drop(self) -> None:
        """Remove the index's tables (tests, or a user starting a crawl over)."""
        with self._session(create_schema=False) as session:
            session.in_write_transaction(session.drop_tables)

    # -- connections ------------------------------------------------------------------------

    @contextmanager
    def _session(self, create_schema: bool = True) -> Iterator[_Session]:
        if self.dialect == "sqlite":
            session: _Session = _SqliteSession(self)
        else:
            session = _PostgresSession(self)
        try:
            if create_schema:
                session.ensure_schema()
            yield session
        finally:
            session.close()


def _check_segment_key(segment_key: str) -> None:
    if not isinstance(segment_key, str) or not segment_key:
        raise ValueError(f"segment_key must be a non-empty string, not {segment_key!r}")


class _Session(ABC):
    """One connection to the index; subclasses hold what differs between SQLite and Postgres."""

    placeholder = "?"

    def __init__(self, index: DedupIndex) -> None:
        self.index = index
        self.claims = index.table
        self.segments = f"{index.table}_segments"
        self.conn: Any = None

    # What differs per dialect.
    @abstractmethod
    def ensure_schema(self) -> None:
        """Create the tables if missing, and this connection's temporary batch table."""

    @abstractmethod
    def in_write_transaction(self, work: Callable[[], T]) -> T:
        """Run ``work`` in one transaction that may write; commit, or roll back on error."""

    def in_read_transaction(self, work: Callable[[], T]) -> T:
        return self.in_write_transaction(work)

    @abstractmethod
    def load_batch(self, cursor: Any, batch: Sequence[bytes]) -> None:
        """Fill the temporary batch table with ``batch`` (uid, position) rows."""

    def probe_by_primary_key(self, cursor: Any) -> None:
        """Steer the planner to primary-key probes for the batch joins (a no-op in SQLite)."""

    def end_read(self) -> None:
        """Finish a statement run outside a transaction (Postgres opens one implicitly)."""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def sql(self, statement: str) -> str:
        return statement.replace("?", self.placeholder)

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        cursor = self.conn.cursor()
        cursor.execute(self.sql(statement), params)
        return cursor

    # The shared SQL.
    def segment_id(self, segment_key: str) -> int:
        """The segment's small integer id (stored per claim instead of its key), made once."""

        def lookup() -> int:
            self.execute(
                f"INSERT INTO {self.segments} (segment_key) VALUES (?) "
                "ON CONFLICT (segment_key) DO NOTHING",
                (segment_key,),
            )
            row = self.execute(
                f"SELECT id FROM {self.segments} WHERE segment_key = ?", (segment_key,)
            ).fetchone()
            return int(row[0])

        return self.in_write_transaction(lookup)

    def claim_batch(self, segment_id: int, batch: Sequence[bytes]) -> list[bytes]:
        cursor = self.conn.cursor()
        cursor.execute(self.sql("DELETE FROM cah_claim_batch"))
        self.load_batch(cursor, batch)
        self.probe_by_primary_key(cursor)
        # Inserting in uid order makes concurrent Postgres writers take row locks in one order,
        # so segments racing over the same uids queue behind each other instead of deadlocking
        # (a deadlock that still happens is retried). WHERE true: SQLite needs it to parse
        # INSERT ... SELECT ... ON CONFLICT.
        cursor.execute(
            self.sql(
                f"INSERT INTO {self.claims} (uid, segment_id) "
                "SELECT uid, ? FROM cah_claim_batch WHERE true ORDER BY uid "
                "ON CONFLICT (uid) DO NOTHING"
            ),
            (segment_id,),
        )
        if cursor.rowcount == len(batch):
            return list(batch)  # every uid was new and is now this segment's: nothing to read back
        # Read back the positions of the uids this segment does NOT own: often few, and
        # integers travel faster than bytea. The LEFT JOIN keeps the batch as the outer loop
        # and probes the claims primary key per uid; a "segment_id = ?" filter would let
        # planners walk the segment's whole index on every batch, making big claims quadratic.
        cursor.execute(
            self.sql(
                f"SELECT b.pos FROM cah_claim_batch b LEFT JOIN {self.claims} c ON c.uid = b.uid "
                "WHERE c.segment_id IS NULL OR c.segment_id <> ?"
            ),
            (segment_id,),
        )
        not_owned = {row[0] for row in cursor.fetchall()}
        return [uid for pos, uid in enumerate(batch) if pos not in not_owned]

    def owners_batch(self, batch: Sequence[bytes]) -> list[tuple[Any, str]]:
        cursor = self.conn.cursor()
        cursor.execute(self.sql("DELETE FROM cah_claim_batch"))
        self.load_batch(cursor, batch)
        self.probe_by_primary_key(cursor)
        cursor.execute(
            f"SELECT c.uid, s.segment_key FROM cah_claim_batch b CROSS JOIN {self.claims} c "
            f"CROSS JOIN {self.segments} s WHERE c.uid = b.uid AND s.id = c.segment_id"
        )
        return [(row[0], row[1]) for row in cursor.fetchall()]

    def release(self, segment_key: str) -> int:
        segment_id = self.execute(
            f"SELECT id FROM {self.segments} WHERE segment_key = ?", (segment_key,)
        ).fetchone()
        if segment_id is None:
            return 0
        # The segment's id row stays: a claim of the same segment running meanwhile keeps a
        # valid id, and the key means the same files forever.
        deleted = self.execute(
            f"DELETE FROM {self.claims} WHERE segment_id = ?", (segment_id[0],)
        ).rowcount
        return int(deleted)

    def count(self, segment_key: str | None) -> int:
        if segment_key is None:
            row = self.execute(f"SELECT COUNT(*) FROM {self.claims}").fetchone()
        else:
            row = self.execute(
                f"SELECT COUNT(*) FROM {self.claims} c CROSS JOIN {self.segments} s "
                "WHERE s.segment_key = ? AND c.segment_id = s.id",
                (segment_key,),
            ).fetchone()
        self.end_read()
        return int(row[0])

    def drop_tables(self) -> None:
        self.execute(f"DROP TABLE IF EXISTS {self.claims}")
        self.execute(f"DROP TABLE IF EXISTS {self.segments}")

    def schema_statements(self, blob: str, identity: str, claims_options: str = "") -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.segments} "
            f"(id {identity}, segment_key TEXT NOT NULL UNIQUE)",
            f"CREATE TABLE IF NOT EXISTS {self.claims} "
            f"(uid {blob} PRIMARY KEY, segment_id INTEGER NOT NULL){claims_options}",
            # release() and per-segment counts find a segment's claims through this index.
            f"CREATE INDEX IF NOT EXISTS {self.claims}_by_segment ON {self.claims} (segment_id)",
        ]


class _SqliteSession(_Session):
    def __init__(self, index: DedupIndex) -> None:
        super().__init__(index)
        path = _sqlite_path(index.url)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the
            # lock before reading and two writers cannot both read-then-fail to upgrade.
            self.conn = sqlite3.connect(path, timeout=_SQLITE_LOCK_WAIT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise DedupIndexError(f"cannot open the dedup index {path}: {exc}") from None

    def ensure_schema(self) -> None:
        self._use_wal()
        self.execute("PRAGMA synchronous=NORMAL")

        def create() -> None:
            # WITHOUT ROWID: the uid key is the table itself, not a rowid table plus an index.
            for statement in self.schema_statements(
                "BLOB", "INTEGER PRIMARY KEY", claims_options=" WITHOUT ROWID"
            ):
                self.execute(statement)

        self.in_write_transaction(create)
        self.execute(
            "CREATE TEMP TABLE IF NOT EXISTS cah_claim_batch "
            "(uid BLOB NOT NULL, pos INTEGER NOT NULL)"
        )

    def _use_wal(self) -> None:
        """WAL lets readers run beside the one writer. The mode is stored in the file, so only a
        fresh file is switched; switching needs the file to itself, and SQLite answers "locked" at
        once rather than waiting, so the first openers of a new index retry until one has won."""
        deadline = time.monotonic() + _SQLITE_LOCK_WAIT_S
        while self.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            try:
                self.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise DedupIndexError(
                        f"cannot switch the dedup index {_sqlite_path(self.index.url)} to WAL: {exc}"
                    ) from None
                time.sleep(0.01)

    def in_write_transaction(self, work: Callable[[], T], begin: str = "BEGIN IMMEDIATE") -> T:
        try:
            self.conn.execute(begin)
        except sqlite3.OperationalError as exc:
            raise DedupIndexError(
                f"dedup index {_sqlite_path(self.index.url)} stayed locked for "
                f"{_SQLITE_LOCK_WAIT_S:.0f}s ({exc}); is a process stuck holding it?"
            ) from None
        try:
            result = work()
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result

    def in_read_transaction(self, work: Callable[[], T]) -> T:
        return self.in_write_transaction(work, begin="BEGIN")

    def load_batch(self, cursor: Any, batch: Sequence[bytes]) -> None:
        cursor.executemany(
            "INSERT INTO cah_claim_batch (uid, pos) VALUES (?, ?)",
            ((uid, pos) for pos, uid in enumerate(batch)),
        )


class _PostgresSession(_Session):
    placeholder = "%s"

    def __init__(self, index: DedupIndex) -> None:
        super().__init__(index)
        import psycopg2

        self._psycopg2 = psycopg2
        try:
            self.conn = psycopg2.connect(
                index.url, connect_timeout=10, application_name="cah-dedup-index"
            )
        except psycopg2.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DedupIndexError(
                f"cannot reach the dedup index at {redact_url(index.url)}: {reason}"
            ) from None

    def ensure_schema(self) -> None:
        def create() -> None:
            exists = self.execute("SELECT to_regclass(%s)", (self.claims,)).fetchone()[0]
            if exists is not None:
                return
            # CREATE TABLE IF NOT EXISTS still races in Postgres (duplicate pg_type row),
            # so concurrent first runs take turns on a lock named after the table.
            self.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.claims,))
            for statement in self.schema_statements(
                "BYTEA", "INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
            ):
                self.execute(statement)

        self.in_write_transaction(create)
        self.in_write_transaction(
            lambda: self.execute(
                "CREATE TEMP TABLE IF NOT EXISTS cah_claim_batch "
                "(uid BYTEA NOT NULL, pos INTEGER NOT NULL)"
            )
        )

    def in_write_transaction(self, work: Callable[[], T]) -> T:
        errors = self._psycopg2.errors
        transient = (errors.DeadlockDetected, errors.SerializationFailure)
        attempt = 0
        while True:
            try:
                result = work()
                self.conn.commit()
                return result
            except transient:
                # Another writer won a lock cycle; the whole batch transaction is safe to redo.
                self.conn.rollback()
                attempt += 1
                if attempt > _PG_TRANSIENT_RETRIES:
                    raise
                time.sleep(0.05 * attempt)
            except BaseException:
                self.conn.rollback()
                raise

    def load_batch(self, cursor: Any, batch: Sequence[bytes]) -> None:
        # COPY is Postgres' bulk path; in its text format "\\x<hex>" is the bytea literal.
        text = "".join(f"\\\\x{uid.hex()}\t{pos}\n" for pos, uid in enumerate(batch))
        cursor.copy_expert("COPY cah_claim_batch (uid, pos) FROM STDIN", io.StringIO(text))

    def probe_by_primary_key(self, cursor: Any) -> None:
        # A batch is a small slice of the claims table, but while the table holds a few
        # million rows Postgres prefers hashing all of it per batch (a full scan per 10k
        # uids); index probes are the right plan at every size, so take hash/merge joins away.
        cursor.execute("SET LOCAL enable_hashjoin = off")
        cursor.execute("SET LOCAL enable_mergejoin = off")

    def end_read(self) -> None:
        self.conn.rollback()


class DedupIndexResource(dg.ConfigurableResource):
    """Global (url, text) dedup index: SQLite under the data root by default, Postgres in deploy.

    Set ``url`` with ``dg.EnvVar("CAH_DEDUP_URL")`` when it carries a password; it is never
    logged (``DedupIndex`` and errors show it redacted).
    """

    url: str = ""
    table: str = DEFAULT_TABLE
    batch_size: int = DEFAULT_BATCH_SIZE

    def index(self, data_root: DataRoot | None = None) -> DedupIndex:
        """The index to use; with no ``url``, a SQLite file under the (local) data root."""
        url = self.url or default_sqlite_url(data_root)
        return DedupIndex(url=url, table=self.table, batch_size=self.batch_size)


def default_sqlite_url(data_root: DataRoot | None) -> str:
    """``sqlite:///<data root>/dedup/index.sqlite``; refuses a data root that is not local."""
    if data_root is None:
        raise DedupIndexError("dedup_index.url is empty and no data root was given to put it in")
    if not data_root.is_local:
        raise DedupIndexError(
            f"data root {redact_url(data_root.url)} is not local, so the SQLite dedup index cannot live there; "
            "set dedup_index.url to a postgresql:// URL"
        )
    path = data_root.fs._strip_protocol(data_root.path(*DEFAULT_SQLITE_PARTS))
    return "sqlite:///" + path
