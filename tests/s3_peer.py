"""A real S3 peer on loopback for tests and benchmarks: moto's standalone server, driven through s3fs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from cah_resources.samples.cluster_peers import moto_server
from cah_resources.storage import DataRoot, s3_storage_options

ENDPOINT_VAR = "CAH_TEST_S3_ENDPOINT"  # set by .ci/run: use that server instead of starting one
# moto accepts any credentials; these only have to look like keys and be recognisable if they leak.
ACCESS_KEY = "cah-test-access-key"
SECRET_KEY = "cah-test-secret-key"
REGION = "eu-central-1"  # not us-east-1, whose buckets take no location constraint


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
