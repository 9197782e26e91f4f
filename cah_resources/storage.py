"""The data root: one local path or fsspec URL holding every output, written atomically."""

from __future__ import annotations

import io
import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from cah_resources.redaction import redact_options, redact_url

LOCAL_PROTOCOLS = ("file", "local")
WRITE_BUFFER = 1 << 20


@dataclass(frozen=True, repr=False)
class DataRoot:
    """A folder of outputs (``./data``, ``/mnt/cah``, ``s3://bucket/cah``); picklable for workers."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __repr__(self) -> str:
        # Work units carry their data root to workers, and Dask and Dagster print them: no credentials.
        return f"DataRoot(url={redact_url(self.url)!r}, storage_options={redact_options(self.storage_options)!r})"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        fs, _ = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return fs

    @property
    def is_local(self) -> bool:
        protocol = self.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
        return any(p in LOCAL_PROTOCOLS for p in protocols)

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
    def open_atomic(self, path: str, mode: str = "wb") -> Iterator[io.IOBase]:
        """Write ``path`` so that readers see the old file or the whole new one, never a part.

        Local files go to a temporary name beside the target and are renamed; object stores
        (s3, gcs, ...) publish an object only when its upload completes, so they are written
        in place.
        """
        fs = self.fs
        parent = path.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        if not self.is_local:
            with fs.open(path, mode) as handle:
                yield handle
            return
        local_path = fs._strip_protocol(path)
        tmp = f"{local_path}.tmp-{uuid.uuid4().hex}"
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
