"""The cluster rehearsal: Postgres, a TLS scheduler, two `cah worker` runners and an S3 peer match one machine."""

import os

import psutil
import pytest
from conftest import skip_or_fail
from s3_peer import s3_endpoint

from cah_assets.rehearsal import run_rehearsal
from cah_resources.samples.cluster_peers import POSTGRES

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """One rehearsal on a small crawl (2 segments), shared by the tests below."""
    try:
        import psycopg2

        psycopg2.connect(dbname="postgres", connect_timeout=5, **POSTGRES).close()
    except Exception as error:  # no driver or no server: the same skip as the other Postgres tests
        skip_or_fail(f"PostgreSQL is not reachable at {POSTGRES['host']}:{POSTGRES['port']} ({error})")
    previous = os.environ.get("DAGSTER_HOME")
    with s3_endpoint() as endpoint:
        outcome = run_rehearsal(
            str(tmp_path_factory.mktemp("rehearsal")),
            wat_files=4,
            pages_per_file=8,
            s3_endpoint=endpoint,
            say=lambda line: None,
        )
        outcome.endpoint_still_up = endpoint
        yield outcome
    assert os.environ.get("DAGSTER_HOME") == previous  # the coordinator's variables were only borrowed


def test_the_cluster_gives_the_one_machine_demos_candidates_shard_statuses_and_kept_pairs(rehearsal):
    assert len(rehearsal.segment_keys) == 2
    for key in rehearsal.segment_keys:
        ours, theirs = rehearsal.cluster[key], rehearsal.one_machine[key]
        assert ours.candidates and ours.candidates == theirs.candidates
        assert ours.shard_rows == theirs.shard_rows
        assert ours.kept and ours.kept == theirs.kept
        assert ours.tar_members and ours.tar_members == theirs.tar_members
    assert rehearsal.failures() == []


def test_a_worker_killed_mid_shard_still_leaves_every_row_exactly_once(rehearsal):
    assert rehearsal.killed is not None and rehearsal.killed.task.startswith("download_shard-")
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(rehearsal.killed.pid).status()
    killed = rehearsal.cluster[rehearsal.killed_segment]
    uids = [uid for uid, _ in killed.shard_rows]
    assert sorted(uids) == sorted(set(uids)) == killed.candidates
    assert len(set(killed.tar_members)) == len(killed.tar_members)
    images = [m for m in killed.tar_members if m.endswith(".jpg")]
    assert len(images) == sum(status == "ok" for _, status in killed.shard_rows)


def test_the_scheduler_refuses_every_client_without_a_certificate_of_its_ca(rehearsal):
    assert set(rehearsal.refusals) == {
        "TLS without a client certificate",
        "dask client with another CA's certificate",
        "dask client over plain TCP",
    }
    assert "accepted" not in rehearsal.refusals.values()
    # The scheduler ends the handshake: an alert (certificate required) or, racing it, a closed connection.
    assert rehearsal.refusals["TLS without a client certificate"].startswith(("SSL", "ConnectionResetError", "closed"))


def test_no_worker_ever_holds_a_path_under_the_coordinators_folders(rehearsal):
    assert rehearsal.watch_samples > 10
    assert rehearsal.trespasses == []


def test_every_stage_then_release_and_report_ran_as_named_jobs_on_a_postgres_instance(rehearsal):
    assert rehearsal.instance_storage == "PostgresRunStorage"
    # Runs of the code location, as the UI launches them: "Re-execute" works on each.
    assert rehearsal.runs == [("dataset", "", "SUCCESS", True)] + [
        ("pipeline", k, "SUCCESS", True) for k in rehearsal.segment_keys
    ]
    assert rehearsal.release_rows == sum(len(set(o.kept)) for o in rehearsal.cluster.values())
    assert "report.md" in rehearsal.report_files


def test_the_rehearsal_leaves_no_process_database_or_bucket_behind(rehearsal):
    import psycopg2
    from s3_peer import peer_options

    from cah_resources.storage import DataRoot

    alive = [
        pid
        for pid in rehearsal.worker_pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert rehearsal.worker_pids and alive == []
    with psycopg2.connect(dbname="postgres", connect_timeout=5, **POSTGRES) as admin, admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (rehearsal.database,))
        assert cursor.fetchone() is None
    assert not DataRoot("s3://", peer_options(rehearsal.endpoint_still_up)).fs.exists(rehearsal.bucket)
