"""The global dedup index: which segment owns each (url, text) pair, in SQLite or Postgres."""

from __future__ import annotations

import functools
import io
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from cah_resources import retries as retry_policies
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
# URL prefixes accepted for Postgres; psycopg2 is the driver (its COPY is the bulk path).
_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg2://")

T = TypeVar("T")


class DedupIndexError(RuntimeError):
    """The dedup index cannot be used as configured (bad URL, unreachable server, locked file)."""


def _sqlite_path(url: str) -> str:
    # SQLAlchemy's convention: sqlite:///relative/path, sqlite:////absolute/path.
    path = url[len("sqlite:///") :]
    if not path or path == ":memory:":
        raise DedupIndexError(
            f"dedup index URL {url!r} names no file; use sqlite:///relative/path or sqlite:////absolute/path"
        )
    return path


def _dialect_of(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith(_POSTGRES_SCHEMES):
        return "postgres"
    raise DedupIndexError(
        f"dedup index URL {redact_url(url)!r} must start with sqlite:/// or postgresql:// (or postgresql+psycopg2://)"
    )


@functools.cache
def _engine(url: str) -> sa.Engine:
    """One engine per URL and process. NullPool: a connection per call, as a picklable index that
    runs on many workers needs, and nothing held open between segments."""
    if _dialect_of(url) == "sqlite":
        path = _sqlite_path(url)
        # AUTOCOMMIT leaves transactions to us: BEGIN IMMEDIATE takes the write lock before a
        # writer reads, so two writers cannot both read and then fail to upgrade.
        return sa.create_engine(
            f"sqlite:///{path}",
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"timeout": _SQLITE_LOCK_WAIT_S},
        )
    rest = url.split("://", 1)[1]
    return sa.create_engine(
        f"postgresql+psycopg2://{rest}",
        poolclass=NullPool,
        connect_args={"connect_timeout": 10, "application_name": "cah-dedup-index"},
    )


@functools.cache
def _tables(name: str) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table]:
    """The index's tables (claims, segments) and the per-connection batch table, in every dialect."""
    metadata = sa.MetaData()
    segments = sa.Table(
        f"{name}_segments",
        metadata,
        # The segment's small integer id is stored per claim instead of its key.
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("segment_key", sa.Text, nullable=False, unique=True),
    )
    claims = sa.Table(
        name,
        metadata,
        sa.Column("uid", sa.LargeBinary, primary_key=True),
        sa.Column("segment_id", sa.Integer, nullable=False),
        # release() and per-segment counts find a segment's claims through this index.
        sa.Index(f"{name}_by_segment", "segment_id"),
        # SQLite: the uid key is the table itself, not a rowid table plus an index.
        sqlite_with_rowid=False,
    )
    batch = sa.Table(
        "cah_claim_batch",
        sa.MetaData(),
        sa.Column("uid", sa.LargeBinary, nullable=False),
        sa.Column("pos", sa.Integer, nullable=False),
        prefixes=["TEMPORARY"],
    )
    return metadata, claims, segments, batch


def _uid_bytes(uid: str) -> bytes:
    if not isinstance(uid, str) or not _UID.match(uid):
        raise ValueError(f"uid {uid!r} is not 32 lowercase hex characters (blake2b-128 of url + NUL + text)")
    return bytes.fromhex(uid)


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class DedupIndex:
    """(url, text) uids with the segment that claimed each; picklable, connects per call.

    ``url`` is ``sqlite:///path/to/index.sqlite`` or ``postgresql://user:pass@host:port/db``
    (``postgresql+psycopg2://`` too). Both dialects run the same claim SQL through SQLAlchemy;
    only bulk loading, locking and planner hints differ.
    """

    url: str
    table: str = DEFAULT_TABLE
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        _dialect_of(self.url)
        if not _IDENTIFIER.match(self.table):
            raise DedupIndexError(f"dedup index table name {self.table!r} must be letters, digits and _ (max 41)")
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
                rows = session.in_write_transaction(functools.partial(session.claim_batch, segment_id, batch))
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
                rows = session.in_read_transaction(functools.partial(session.owners_batch, batch))
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

    conn: sa.Connection  # opened by each dialect's __init__

    def __init__(self, index: DedupIndex) -> None:
        self.index = index
        self.metadata, self.claims, self.segments, self.batch = _tables(index.table)

    def connect(self) -> None:
        try:
            self.conn = _engine(self.index.url).connect()
        except sa.exc.DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
            raise DedupIndexError(f"cannot reach the dedup index at {redact_url(self.index.url)}: {reason}") from None

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
    def load_batch(self, batch: Sequence[bytes]) -> None:
        """Fill the temporary batch table with ``batch`` (uid, position) rows."""

    def probe_by_primary_key(self) -> None:  # noqa: B027 - a hook only Postgres fills in
        """Steer the planner to primary-key probes for the batch joins (a no-op in SQLite)."""

    def end_read(self) -> None:  # noqa: B027 - a hook only Postgres fills in
        """Finish a statement run outside a transaction (Postgres opens one implicitly)."""

    def close(self) -> None:
        self.conn.close()

    def execute(self, statement: str, **params: Any) -> sa.CursorResult:
        """``statement`` with ``:name`` parameters, in the connection's own parameter style."""
        return self.conn.execute(sa.text(statement), params)

    # The shared SQL. The joins are written out (CROSS JOIN fixes SQLite's join order).
    def segment_id(self, segment_key: str) -> int:
        """The segment's small integer id (stored per claim instead of its key), made once."""

        def lookup() -> int:
            self.execute(
                f"INSERT INTO {self.segments.name} (segment_key) VALUES (:key) ON CONFLICT (segment_key) DO NOTHING",
                key=segment_key,
            )
            return int(
                self.execute(
                    f"SELECT id FROM {self.segments.name} WHERE segment_key = :key", key=segment_key
                ).scalar_one()
            )

        return self.in_write_transaction(lookup)

    def claim_batch(self, segment_id: int, batch: Sequence[bytes]) -> list[bytes]:
        self.conn.execute(self.batch.delete())
        self.load_batch(batch)
        self.probe_by_primary_key()
        # Inserting in uid order makes concurrent Postgres writers take row locks in one order,
        # so segments racing over the same uids queue behind each other instead of deadlocking
        # (a deadlock that still happens is retried). WHERE true: SQLite needs it to parse
        # INSERT ... SELECT ... ON CONFLICT.
        inserted = self.execute(
            f"INSERT INTO {self.claims.name} (uid, segment_id) "
            "SELECT uid, :segment_id FROM cah_claim_batch WHERE true ORDER BY uid "
            "ON CONFLICT (uid) DO NOTHING",
            segment_id=segment_id,
        )
        if inserted.rowcount == len(batch):
            return list(batch)  # every uid was new and is now this segment's: nothing to read back
        # Read back the positions of the uids this segment does NOT own: often few, and
        # integers travel faster than bytea. The LEFT JOIN keeps the batch as the outer loop
        # and probes the claims primary key per uid; a "segment_id = ?" filter would let
        # planners walk the segment's whole index on every batch, making big claims quadratic.
        rows = self.execute(
            f"SELECT b.pos FROM cah_claim_batch b LEFT JOIN {self.claims.name} c ON c.uid = b.uid "
            "WHERE c.segment_id IS NULL OR c.segment_id <> :segment_id",
            segment_id=segment_id,
        )
        not_owned = {row[0] for row in rows}
        return [uid for pos, uid in enumerate(batch) if pos not in not_owned]

    def owners_batch(self, batch: Sequence[bytes]) -> list[tuple[Any, str]]:
        self.conn.execute(self.batch.delete())
        self.load_batch(batch)
        self.probe_by_primary_key()
        rows = self.execute(
            f"SELECT c.uid, s.segment_key FROM cah_claim_batch b CROSS JOIN {self.claims.name} c "
            f"CROSS JOIN {self.segments.name} s WHERE c.uid = b.uid AND s.id = c.segment_id"
        )
        return [(row[0], row[1]) for row in rows]

    def release(self, segment_key: str) -> int:
        segment_id = self.execute(
            f"SELECT id FROM {self.segments.name} WHERE segment_key = :key", key=segment_key
        ).fetchone()
        if segment_id is None:
            return 0
        # The segment's id row stays: a claim of the same segment running meanwhile keeps a
        # valid id, and the key means the same files forever.
        deleted = self.conn.execute(self.claims.delete().where(self.claims.c.segment_id == segment_id[0]))
        return int(deleted.rowcount)

    def count(self, segment_key: str | None) -> int:
        if segment_key is None:
            n = self.execute(f"SELECT COUNT(*) FROM {self.claims.name}").scalar_one()
        else:
            n = self.execute(
                f"SELECT COUNT(*) FROM {self.claims.name} c CROSS JOIN {self.segments.name} s "
                "WHERE s.segment_key = :key AND c.segment_id = s.id",
                key=segment_key,
            ).scalar_one()
        self.end_read()
        return int(n)

    def drop_tables(self) -> None:
        self.metadata.drop_all(self.conn, checkfirst=True)

    def create_tables(self) -> None:
        self.metadata.create_all(self.conn, checkfirst=True)
        self.batch.create(self.conn, checkfirst=True)


class _SqliteSession(_Session):
    def __init__(self, index: DedupIndex) -> None:
        super().__init__(index)
        path = _sqlite_path(index.url)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.conn = _engine(index.url).connect()
        except (OSError, sa.exc.DBAPIError) as exc:
            raise DedupIndexError(f"cannot open the dedup index {path}: {getattr(exc, 'orig', exc)}") from None

    def ensure_schema(self) -> None:
        self._use_wal()
        self.conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
        self.in_write_transaction(self.create_tables)

    def _use_wal(self) -> None:
        """WAL lets readers run beside the one writer. The mode is stored in the file, so only a
        fresh file is switched; switching needs the file to itself, and SQLite answers "locked" at
        once rather than waiting, so the first openers of a new index retry until one has won."""

        def switch() -> None:
            if self.conn.exec_driver_sql("PRAGMA journal_mode").scalar_one().lower() != "wal":
                self.conn.exec_driver_sql("PRAGMA journal_mode=WAL")

        def is_locked(exc: BaseException) -> bool:
            return isinstance(exc, sa.exc.OperationalError) and "locked" in str(exc.orig)

        try:
            retry_policies.sqlite_wal_switch(_SQLITE_LOCK_WAIT_S, is_locked)(switch)
        except sa.exc.OperationalError as exc:
            raise DedupIndexError(
                f"cannot switch the dedup index {_sqlite_path(self.index.url)} to WAL: {exc.orig}"
            ) from None

    def in_write_transaction(self, work: Callable[[], T], begin: str = "BEGIN IMMEDIATE") -> T:
        try:
            self.conn.exec_driver_sql(begin)
        except sa.exc.OperationalError as exc:
            raise DedupIndexError(
                f"dedup index {_sqlite_path(self.index.url)} stayed locked for "
                f"{_SQLITE_LOCK_WAIT_S:.0f}s ({exc.orig}); is a process stuck holding it?"
            ) from None
        try:
            result = work()
        except BaseException:
            self.conn.exec_driver_sql("ROLLBACK")
            raise
        self.conn.exec_driver_sql("COMMIT")
        return result

    def in_read_transaction(self, work: Callable[[], T]) -> T:
        return self.in_write_transaction(work, begin="BEGIN")

    def load_batch(self, batch: Sequence[bytes]) -> None:
        # executemany straight to sqlite3: the bulk path, without a dict per row.
        self.conn.exec_driver_sql(
            "INSERT INTO cah_claim_batch (uid, pos) VALUES (?, ?)",
            [(uid, pos) for pos, uid in enumerate(batch)],
        )


class _PostgresSession(_Session):
    def __init__(self, index: DedupIndex) -> None:
        super().__init__(index)
        self.connect()

    def ensure_schema(self) -> None:
        def create() -> None:
            if sa.inspect(self.conn).has_table(self.claims.name):
                return
            # CREATE TABLE IF NOT EXISTS still races in Postgres (duplicate pg_type row),
            # so concurrent first runs take turns on a lock named after the table.
            self.execute("SELECT pg_advisory_xact_lock(hashtext(:name))", name=self.claims.name)
            self.metadata.create_all(self.conn, checkfirst=True)

        self.in_write_transaction(create)
        self.in_write_transaction(lambda: self.batch.create(self.conn, checkfirst=True))

    def in_write_transaction(self, work: Callable[[], T]) -> T:
        import psycopg2.errors

        transient = (psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure)

        def is_transient(exc: BaseException) -> bool:
            return isinstance(getattr(exc, "orig", exc), transient)

        def attempt() -> T:
            try:
                result = work()
                self.conn.commit()
                return result
            except BaseException:
                # Another writer may have won a lock cycle; the whole batch transaction is safe to redo.
                self.conn.rollback()
                raise

        return retry_policies.postgres_transaction(_PG_TRANSIENT_RETRIES, is_transient)(attempt)

    def load_batch(self, batch: Sequence[bytes]) -> None:
        # COPY is Postgres' bulk path (psycopg2's own call); in its text format "\\x<hex>" is the bytea literal.
        text = "".join(f"\\\\x{uid.hex()}\t{pos}\n" for pos, uid in enumerate(batch))
        cursor = self.conn.connection.cursor()
        cursor.copy_expert("COPY cah_claim_batch (uid, pos) FROM STDIN", io.StringIO(text))

    def probe_by_primary_key(self) -> None:
        # A batch is a small slice of the claims table, but while the table holds a few
        # million rows Postgres prefers hashing all of it per batch (a full scan per 10k
        # uids); index probes are the right plan at every size, so take hash/merge joins away.
        self.conn.exec_driver_sql("SET LOCAL enable_hashjoin = off")
        self.conn.exec_driver_sql("SET LOCAL enable_mergejoin = off")

    def end_read(self) -> None:
        self.conn.rollback()


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
