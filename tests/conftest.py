"""Fixtures shared by the suite: small real inputs and local twins of every resource."""

import os

import pytest

from cah_assets.resources import ComputeResource
from cah_resources.samples.sample_crawl import generate_crawl
from cah_resources.storage import DataRoot

REQUIRE_SERVICES = os.environ.get("CAH_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip a test whose service is missing, unless CI asked for every service (then it fails)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"CAH_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def data_root(tmp_path) -> DataRoot:
    return DataRoot(str(tmp_path / "data"))


@pytest.fixture(scope="session")
def sample_crawl(tmp_path_factory):
    """Three generated WAT files of CC-MAIN-SAMPLE with their ground truth."""
    return generate_crawl(str(tmp_path_factory.mktemp("crawl")), wat_files=3, pages_per_file=40, seed=7)


@pytest.fixture
def local_compute() -> ComputeResource:
    """An in-process Dask cluster: real scheduler and workers, threads instead of processes."""
    return ComputeResource(n_workers=2, processes=False)
