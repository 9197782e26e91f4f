"""The data root: one local path or fsspec URL holding every output, written atomically."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractBufferedFile

from cah_resources.redaction import redact_options, redact_url

LOCAL_PROTOCOLS = ("file", "local")
TEMPORARY = ".tmp-"  # between a file's name and its writer's id, while open_atomic writes it


def writer_id() -> str:
    """Who writes a temporary file: ``host~pid~random``, so a cleanup can tell a dead writer's file on this host."""
    return f"{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex}"


# A writer appends to its temporary file as it goes; one on another host untouched this long is a dead
# writer's (on this host, its process tells).
STALE_TEMPORARY_SECONDS = 3600.0


def writer_may_live(root: DataRoot, path: str, writer: str) -> bool:
    """Whether the writer of a temporary file may still be writing it: on this host, whether its
    process lives; elsewhere (a shared store), whether it wrote in the last STALE_TEMPORARY_SECONDS."""
    host, _, rest = writer.partition("~")
    pid = rest.partition("~")[0]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return _seconds_since_written(root, path) < STALE_TEMPORARY_SECONDS


def _seconds_since_written(root: DataRoot, path: str) -> float:
    try:
        modified = root.fs.modified(path)
    except (FileNotFoundError, NotImplementedError):
        return float("inf")
    return time.time() - modified.timestamp()


def remove_dead_temporaries(root: DataRoot, folder: str) -> list[str]:
    """Remove the temporary files below ``folder`` whose writer is gone (a process killed mid-write
    never runs its cleanup; a shard's tar may be a gigabyte); returns their paths. A finished unit is
    never written again, so nothing else would remove them."""
    if not root.exists(folder):
        return []
    removed = []
    for path in root.fs.find(folder):
        name = path.rsplit("/", 1)[-1]
        if TEMPORARY not in name or writer_may_live(root, path, name.split(TEMPORARY, 1)[1]):
            continue
        try:
            root.fs.rm(path)
        except FileNotFoundError:  # its writer published or dropped it meanwhile
            continue
        removed.append(path)
    return removed


# Filesystems whose open(..., "wb") shows the file at once; they get a temporary name and a move.
PUBLISH_ON_OPEN_PROTOCOLS = ("memory",)
WRITE_BUFFER = 1 << 20
S3_PREFIXES = ("s3://", "s3a://")
# The storage resource's S3 fields and the standard AWS variables that fill them, first set wins.
S3_ENV_VARS = {
    "endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "access_key_id": ("AWS_ACCESS_KEY_ID",),
    "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
}


def s3_storage_options(endpoint_url: str = "", key: str = "", secret: str = "", region: str = "") -> dict[str, Any]:
    """s3fs options for the values given; what is empty is left to botocore's own lookup."""
    options: dict[str, Any] = {}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    if key:
        options["key"] = key
    if secret:
        options["secret"] = secret
    if region:
        options["client_kwargs"] = {"region_name": region}
    return options


def s3_options_from_environment() -> dict[str, Any]:
    """s3fs options from the standard AWS variables that are set (S3_ENV_VARS), for commands run outside Dagster."""
    values = [next((os.environ[v] for v in variables if os.environ.get(v)), "") for variables in S3_ENV_VARS.values()]
    return s3_storage_options(*values)


@dataclass(frozen=True, repr=False)
class DataRoot:
    """A folder of outputs (``./data``, ``/mnt/cah``, ``s3://bucket/cah``); picklable for workers."""

    url: str
    # Credentials travel here to the workers; repr=False keeps them out of logs and metadata.
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)

    def __repr__(self) -> str:
        # Work units carry their data root to workers, and Dask and Dagster print them: no credentials.
        return f"DataRoot(url={redact_url(self.url)!r}, storage_options={redact_options(self.storage_options)!r})"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        options = dict(self.storage_options)
        if "://" in self.url and not self.url.startswith(("file://", "local://")):
            # Other machines write to the same store: a cached listing would hide their files.
            options.setdefault("use_listings_cache", False)
        fs, _ = fsspec.core.url_to_fs(self.url, **options)
        return fs

    @property
    def _protocols(self) -> set[str]:
        protocol = self.fs.protocol
        return {protocol} if isinstance(protocol, str) else set(protocol)

    @property
    def is_local(self) -> bool:
        return bool(self._protocols & set(LOCAL_PROTOCOLS))

    def path(self, *parts: str) -> str:
        base = self.url.rstrip("/")
        if self.is_local and "://" not in base:
            base = os.path.abspath(base)
        return "/".join([base, *[p.strip("/") for p in parts if p]])

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def listdir(self, path: str) -> list[str]:
        if not self.fs.exists(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))

    def remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    @contextmanager
    def open_atomic(self, path: str, mode: str = "wb") -> Iterator[IO[Any]]:
        """Write ``path`` so that readers see the old file or the whole new one, never a part.

        Local files go to a temporary name beside the target and are renamed. Object stores
        (s3, gcs, ...) publish an object only when its upload completes, so they are written in
        place, and a write that raises is discarded (its multipart upload aborted) rather than
        completed; a process killed mid-write never completes its upload. Other filesystems
        (memory://) write to a temporary name and move it.
        """
        fs = self.fs
        parent = path.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        if self.is_local:
            with _local_atomic(fs._strip_protocol(path), mode) as handle:
                yield handle
            return
        if self._protocols & set(PUBLISH_ON_OPEN_PROTOCOLS):
            with _moved_atomic(fs, path, mode) as moved:
                yield moved
            return
        handle = fs.open(path, mode)
        try:
            yield handle
        except BaseException:
            # fsspec's __exit__/close would complete the upload with whatever was written so far.
            handle.discard()
            if isinstance(handle, AbstractBufferedFile):
                handle.closed = True  # close() (also from __del__) would flush and commit the rest
            raise
        handle.close()

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.open_atomic(path, "wb") as handle:
            handle.write(data)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as handle:
            return handle.read()

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    def write_parquet(self, path: str, table: pa.Table) -> None:
        with self.open_atomic(path, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")

    def read_parquet(self, path: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(path, "rb") as handle:
            return pq.read_table(handle, columns=columns)


@contextmanager
def _local_atomic(local_path: str, mode: str) -> Iterator[IO[Any]]:
    tmp = f"{local_path}{TEMPORARY}{writer_id()}"  # one writer's own: two writers of a file never meet
    try:
        # A large buffer: shard tars are written a sample (tens of KB) at a time.
        with open(tmp, mode, buffering=WRITE_BUFFER) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, local_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def _moved_atomic(fs: fsspec.AbstractFileSystem, path: str, mode: str) -> Iterator[IO[Any]]:
    tmp = f"{path}{TEMPORARY}{writer_id()}"
    try:
        with fs.open(tmp, mode) as handle:
            yield handle
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
