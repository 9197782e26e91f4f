"""The global dedup index on SQLite and on the real Postgres: ownership, races, retries, scale."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import dagster as dg
import pytest
from conftest import skip_or_fail

from cah_assets.resources import DedupIndexResource
from cah_resources.dataset.dedup_index import DedupIndex, DedupIndexError, default_sqlite_url
from cah_resources.storage import DataRoot

POSTGRES_URL = os.environ.get("CAH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pair_uid(url: str, text: str) -> str:
    return hashlib.blake2b(f"{url}\x00{text}".encode(), digest_size=16).hexdigest()


def uids(prefix: str, n: int) -> list[str]:
    return [pair_uid(f"http://img.test/{prefix}/{i}.jpg", f"caption {i}") for i in range(n)]


def postgres_unreachable_reason() -> str | None:
    import psycopg2

    try:
        psycopg2.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg2.Error as exc:
        return f"PostgreSQL at {POSTGRES_URL} unreachable ({str(exc).strip().splitlines()[0]})"
    return None


def require_postgres() -> None:
    reason = postgres_unreachable_reason()
    if reason is not None:
        skip_or_fail(reason)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_index(request, tmp_path):
    """Factory of empty indexes on one backend; each gets its own table, dropped afterwards."""
    if request.param == "postgres":
        require_postgres()
        url = POSTGRES_URL
    else:
        url = f"sqlite:///{tmp_path}/dedup/index.sqlite"
    made: list[DedupIndex] = []

    def make(batch_size: int = 10_000) -> DedupIndex:
        index = DedupIndex(url, table=f"dedup_test_{uuid.uuid4().hex[:12]}", batch_size=batch_size)
        made.append(index)
        return index

    yield make
    for index in made:
        index.drop()


def test_a_segment_owns_every_uid_it_claims_first(make_index):
    index = make_index()
    mine = uids("a", 50)
    assert index.claim("CC-MAIN-2024-10_00000", mine) == set(mine)
    assert index.count("CC-MAIN-2024-10_00000") == 50


def test_a_pair_claimed_by_an_earlier_segment_is_not_owned_by_a_later_one(make_index):
    index = make_index(batch_size=7)
    first, shared, second = uids("first", 20), uids("shared", 30), uids("second", 25)
    assert index.claim("CC-MAIN-2024-10_00000", first + shared) == set(first + shared)
    assert index.claim("CC-MAIN-2024-10_00001", shared + second) == set(second)
    owners = index.owners(shared + second)
    assert {owners[u] for u in shared} == {"CC-MAIN-2024-10_00000"}
    assert {owners[u] for u in second} == {"CC-MAIN-2024-10_00001"}


def test_retry_of_a_segment_keeps_its_dedup_claims(make_index):
    index = make_index(batch_size=16)
    pairs = uids("seg", 100)
    first_run = index.claim("CC-MAIN-2024-10_00003", pairs)
    index.claim("CC-MAIN-2024-10_00004", pairs[::2] + uids("other", 10))
    retry = index.claim("CC-MAIN-2024-10_00003", pairs)
    assert retry == first_run == set(pairs)
    assert index.count() == 110


def test_retry_after_a_partial_claim_owns_the_first_part_and_the_rest(make_index):
    index = make_index(batch_size=10)
    pairs = uids("seg", 60)
    # The first attempt died after claiming a third of its pairs; another segment took some
    # of the unclaimed rest meanwhile.
    index.claim("CC-MAIN-2024-10_00005", pairs[:20])
    index.claim("CC-MAIN-2024-10_00006", pairs[50:])
    assert index.claim("CC-MAIN-2024-10_00005", pairs) == set(pairs[:50])


def test_duplicate_uids_within_one_claim_are_owned_once(make_index):
    index = make_index()
    pairs = uids("dup", 5)
    assert index.claim("CC-MAIN-2024-10_00000", pairs + pairs[:3]) == set(pairs)
    assert index.count() == 5


def test_release_frees_a_deleted_segments_claims_for_others(make_index):
    index = make_index()
    pairs = uids("rel", 40)
    index.claim("CC-MAIN-2024-10_00000", pairs)
    assert index.release("CC-MAIN-2024-10_00000") == 40
    assert index.release("CC-MAIN-2024-10_00000") == 0
    assert index.count() == 0
    assert index.claim("CC-MAIN-2024-10_00001", pairs) == set(pairs)


def test_a_malformed_uid_is_refused_in_one_line_and_nothing_is_claimed(make_index):
    index = make_index()
    good = uids("good", 3)
    with pytest.raises(ValueError, match="not 32 lowercase hex") as error:
        index.claim("CC-MAIN-2024-10_00000", [*good, "http://not-a-uid"])
    assert "\n" not in str(error.value)
    assert index.count() == 0


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_segments_racing_for_the_same_pairs_each_pair_has_exactly_one_owner(make_index, workers):
    index = make_index(batch_size=250)
    shared = uids("shared", 6_000)
    segments = [f"CC-MAIN-2024-10_{i:05d}" for i in range(4)]
    own = {segment: uids(segment, 500) for segment in segments}
    # claim() sorts its uids, so the four writers contend for the same batches at once.
    claims = [(segment, shared + own[segment]) for segment in segments]
    if workers == "threads":
        pool = ThreadPoolExecutor(len(segments))
    else:
        # fork: the children start in milliseconds with the index module already imported.
        pool = ProcessPoolExecutor(len(segments), mp_context=multiprocessing.get_context("fork"))
    with pool:
        results = list(pool.map(index.claim, *zip(*claims, strict=False)))
    owned = dict(zip(segments, results, strict=False))

    for segment in segments:
        assert set(own[segment]) <= owned[segment]
    won_shared = [owned[segment] & set(shared) for segment in segments]
    assert sum(len(won) for won in won_shared) == len(shared)
    assert set().union(*won_shared) == set(shared)
    owners = index.owners(shared)
    for segment, won in zip(segments, won_shared, strict=False):
        assert {u for u, owner in owners.items() if owner == segment} == won
    # The losers' retries agree with the race's outcome.
    for segment, pairs in claims:
        assert index.claim(segment, pairs) == owned[segment]


def test_a_claim_of_a_quarter_million_pairs_is_batched_and_exact(make_index):
    index = make_index()
    pairs = [os.urandom(16).hex() for _ in range(250_000)]
    assert index.claim("CC-MAIN-2024-10_00000", pairs) == set(pairs)
    later = pairs[::5] + uids("fresh", 1_000)
    assert index.claim("CC-MAIN-2024-10_00001", later) == set(uids("fresh", 1_000))
    assert index.count("CC-MAIN-2024-10_00000") == 250_000
    assert index.count() == 251_000


def test_the_default_index_is_a_sqlite_file_under_the_data_root(tmp_path):
    root = DataRoot(str(tmp_path / "data"))
    index = DedupIndexResource().index(root)
    assert index.dialect == "sqlite"
    index.claim("CC-MAIN-2024-10_00000", uids("x", 3))
    assert (tmp_path / "data" / "dedup" / "index.sqlite").is_file()


def test_a_remote_data_root_without_a_dedup_url_is_refused_with_what_to_set():
    with pytest.raises(DedupIndexError, match=r"set dedup_index.url to a postgresql://"):
        default_sqlite_url(DataRoot("memory://bucket/cah"))


def test_an_unknown_url_scheme_is_refused_at_construction():
    with pytest.raises(DedupIndexError, match="must start with sqlite:/// or postgresql://"):
        DedupIndex("mysql://root:pw@127.0.0.1/cah")


def test_an_unreachable_postgres_error_names_the_server_but_never_the_password():
    index = DedupIndex("postgresql://cah:hunter2-secret@127.0.0.1:1/cah")
    assert "hunter2-secret" not in repr(index)
    with pytest.raises(DedupIndexError) as error:
        index.claim("CC-MAIN-2024-10_00000", uids("x", 1))
    message = str(error.value)
    assert "127.0.0.1:1" in message and "***" in message
    assert "hunter2-secret" not in message and "\n" not in message


@pytest.mark.postgres
def test_an_asset_claims_through_the_resource_with_the_url_from_an_env_var(monkeypatch):
    require_postgres()
    table = f"dedup_test_{uuid.uuid4().hex[:12]}"
    # Trust auth ignores the password; it is there to prove it never reaches the event log.
    secret_url = POSTGRES_URL.replace("postgres@", "postgres:s3cret-pw@")
    monkeypatch.setenv("CAH_TEST_DEDUP_URL", secret_url)
    pairs = uids("asset", 20)

    @dg.asset
    def claimed(dedup_index: DedupIndexResource) -> dg.MaterializeResult:
        index = dedup_index.index()
        owned = index.claim("CC-MAIN-2024-10_00000", pairs)
        return dg.MaterializeResult(metadata={"owned": len(owned), "index": repr(index)})

    resource = DedupIndexResource(url=dg.EnvVar("CAH_TEST_DEDUP_URL"), table=table)
    try:
        result = dg.materialize([claimed], resources={"dedup_index": resource})
        assert result.success
        materialization = result.asset_materializations_for_node("claimed")[0]
        assert materialization.metadata["owned"].value == 20
        events = "\n".join(str(event) for event in result.all_events)
        assert "s3cret-pw" not in events
        assert "s3cret-pw" not in str(result.dagster_run.run_config)
    finally:
        DedupIndex(POSTGRES_URL, table=table).drop()


def test_the_first_openers_of_a_new_sqlite_index_wait_for_each_other(tmp_path):
    # Opening a new index switches its file to WAL, which needs the file to itself; SQLite says
    # "locked" at once to the others, and segments that start together must not fail on it.
    for round_ in range(40):
        url = f"sqlite:///{tmp_path}/index-{round_}.sqlite"
        start, errors = threading.Barrier(6), []

        def claim(i: int, start=start, url=url, errors=errors) -> None:
            start.wait()
            try:
                DedupIndex(url).claim(f"CC-MAIN-2024-10_{i:05d}", uids(str(i), 3))
            except Exception as exc:  # collected: a thread's exception would not fail the test
                errors.append(exc)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and DedupIndex(url).count() == 18


@pytest.mark.postgres
def test_a_postgresql_psycopg2_url_as_the_readme_documents_claims_like_postgresql(tmp_path):
    require_postgres()
    table = f"dedup_test_{uuid.uuid4().hex[:12]}"
    index = DedupIndex(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg2://", 1), table=table)
    try:
        assert index.claim("CC-MAIN-2024-10_00000", uids("driver", 5)) == set(uids("driver", 5))
        assert DedupIndex(POSTGRES_URL, table=table).count("CC-MAIN-2024-10_00000") == 5
    finally:
        index.drop()
