"""A real S3 peer on loopback for tests and benchmarks: moto's standalone server, driven through s3fs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from typing import Iterator

from cah_resources.storage import DataRoot, s3_storage_options

ENDPOINT_VAR = "CAH_TEST_S3_ENDPOINT"  # set by .ci/run: use that server instead of starting one
# moto accepts any credentials; these only have to look like keys and be recognisable if they leak.
ACCESS_KEY = "cah-test-access-key"
SECRET_KEY = "cah-test-secret-key"
REGION = "eu-central-1"  # not us-east-1, whose buckets take no location constraint
START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(endpoint: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode} before answering on {endpoint}")
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"moto server did not answer on {endpoint} within {timeout_s:.0f} s")


@contextmanager
def moto_server(port: int = 0) -> Iterator[str]:
    """moto's S3 server in its own process on a loopback port; yields its endpoint URL."""
    port = port or _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_up(endpoint, process, START_TIMEOUT_S)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def s3_endpoint() -> Iterator[str]:
    """The endpoint of CAH_TEST_S3_ENDPOINT when set, else of a moto server started for the caller."""
    if os.environ.get(ENDPOINT_VAR):
        yield os.environ[ENDPOINT_VAR].rstrip("/")
        return
    with moto_server() as endpoint:
        yield endpoint


def peer_options(endpoint: str, **extra) -> dict:
    """s3fs options that reach the peer with the test credentials."""
    return {**s3_storage_options(endpoint, ACCESS_KEY, SECRET_KEY, REGION), **extra}


def new_bucket_root(endpoint: str, prefix: str = "cah", **extra) -> DataRoot:
    """A data root in a bucket of its own (so tests sharing one server never see each other's objects)."""
    bucket = f"cah-{uuid.uuid4().hex[:16]}"
    root = DataRoot(f"s3://{bucket}/{prefix}", peer_options(endpoint, **extra))
    root.fs.mkdir(bucket)
    return root
