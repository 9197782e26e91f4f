"""The Dagster instance: the local dagster.yaml's limits, and segments run on PostgreSQL that survive a restart."""

import os
import shutil
import threading
import time
import uuid

import dagster as dg
import pytest
from conftest import skip_or_fail

from cah_assets.checks import candidates_checks
from cah_assets.definitions import defs
from cah_assets.partitions import segments
from cah_assets.policies import GPU_POOL
from cah_assets.resources import CommonCrawl, ComputeResource, StorageResource
from cah_assets.stages.candidates import candidates
from cah_resources.crawl.segments import register_crawl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
NOT_RETRIED = {"execution": {"config": {"in_process": {"retries": {"disabled": {}}}}}}


def _home_with(tmp_path, yaml_name: str) -> str:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(os.path.join(REPO, yaml_name), home / "dagster.yaml")
    return str(home)


# --- the local instance (dagster.yaml at the root) ------------------------------------------------


def test_the_local_instance_caps_backfill_runs_and_monitors_runs(tmp_path):
    instance = dg.DagsterInstance.from_config(_home_with(tmp_path, "dagster.yaml"))
    queue = instance.get_concurrency_config().run_queue_config
    assert {"key": "dagster/backfill", "limit": 2} in queue.tag_concurrency_limits
    assert queue.max_concurrent_runs > 2  # scheduled segments keep flowing while backfills run
    assert instance.run_monitoring_enabled
    assert instance.run_retries_enabled
    assert type(instance.run_storage).__name__ == "SqliteRunStorage"
    assert instance.root_directory == str(tmp_path / "dagster_home")


@dg.asset(pool=GPU_POOL)
def step_in_the_gpu_pool() -> float:
    return time.time()


def test_a_gpu_step_waits_until_the_gpu_pool_has_a_free_slot(tmp_path):
    instance = dg.DagsterInstance.from_config(_home_with(tmp_path, "dagster.yaml"))
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(GPU_POOL)
    assert storage.get_concurrency_info(GPU_POOL).slot_count == 1
    # Another run's CLIP step holds the one slot.
    held = storage.claim_concurrency_slot(GPU_POOL, "another-run", "clip_pairs")
    assert held.slot_status.value == "CLAIMED"
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=dg.materialize([step_in_the_gpu_pool], instance=instance))
    )
    thread.start()
    time.sleep(5)
    assert thread.is_alive(), "the step ran although the gpu pool had no free slot"
    released = time.time()
    storage.free_concurrency_slots_for_run("another-run")
    thread.join(timeout=120)
    assert not thread.is_alive()
    result = outcome["result"]
    assert result.success
    assert result.output_for_node("step_in_the_gpu_pool") >= released


# --- PostgreSQL (deploy/dagster.yaml) -------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_database():
    """A fresh database on the local PostgreSQL server, dropped afterwards."""
    try:
        import psycopg2
    except ImportError:
        skip_or_fail("psycopg2 is not installed (uv sync installs it with the dev group)")
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
    except psycopg2.OperationalError as error:
        skip_or_fail(f"PostgreSQL is not reachable at {PG['host']}:{PG['port']} ({str(error).strip()})")
    admin.autocommit = True
    name = f"cah_test_{uuid.uuid4().hex[:12]}"
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    yield name
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def pg_home(tmp_path, pg_database, monkeypatch):
    """$DAGSTER_HOME with the production instance config, its credentials from the environment."""
    for key, value in {
        "HOST": PG["host"],
        "PORT": str(PG["port"]),
        "DB": pg_database,
        "USERNAME": PG["user"],
        "PASSWORD": "",
    }.items():
        monkeypatch.setenv(f"DAGSTER_PG_{key}", value)
    return _home_with(tmp_path, "deploy/dagster.yaml")


def candidates_job() -> dg.JobDefinition:
    """The candidates job with resources from the environment, rebuilt by Dagster to execute a run."""
    resources = {
        **defs.resources,
        "compute": ComputeResource(n_workers=2, processes=False),
        "common_crawl": CommonCrawl(base_url=os.environ["CAH_CRAWL_SOURCE"]),
        "storage": StorageResource(root=os.environ["CAH_DATA_ROOT"]),
    }
    job = dg.define_asset_job("candidates_job", selection=dg.AssetSelection.assets(candidates), partitions_def=segments)
    return dg.Definitions(
        assets=[candidates], asset_checks=[candidates_checks], jobs=[job], resources=resources
    ).resolve_job_def("candidates_job")


def _run_segment(instance, key: str, retries: bool = True) -> dg.DagsterRun:
    result = dg.execute_job(
        dg.reconstructable(candidates_job),
        instance,
        tags={"dagster/partition": key},
        run_config=IN_PROCESS if retries else NOT_RETRIED,
        raise_on_error=False,
    )
    return result.dagster_run


@pytest.mark.postgres
def test_segments_run_on_postgres_and_survive_a_restart_of_the_instance(pg_home, sample_crawl, tmp_path, monkeypatch):
    source, data_root = str(tmp_path / "crawl"), str(tmp_path / "data")
    shutil.copytree(sample_crawl.root, source)
    monkeypatch.setenv("CAH_CRAWL_SOURCE", source)
    monkeypatch.setenv("CAH_DATA_ROOT", data_root)
    registration = register_crawl(
        CommonCrawl(base_url=source).source(), StorageResource(root=data_root).data_root(), sample_crawl.crawl, 1
    )
    ok_key, failed_key, untouched_key = registration.keys()
    # Used as a context manager, the instance is also the one Dagster loads definitions against.
    with dg.DagsterInstance.from_config(pg_home) as instance:
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        instance.add_dynamic_partitions(segments.name, registration.keys())

        done = _run_segment(instance, ok_key)
        # The mirror lost the segment's WAT file: the step fails (retries off to keep the test short).
        os.remove(os.path.join(source, registration.files_of(failed_key)[0]))
        failed = _run_segment(instance, failed_key, retries=False)
        assert (done.status, failed.status) == (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)

        def state(inst: dg.DagsterInstance) -> dict:
            materializations = inst.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("candidates")), limit=10
            ).records
            check = inst.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey("candidates"), "unique_uids"), limit=10
            )
            failure = next(
                e
                for e in inst.all_logs(failed.run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
            )
            error = failure.dagster_event.step_failure_data.error
            while error.cause:  # the root cause, under Dagster's retry and Dask's wrapping
                error = error.cause
            return {
                "runs": sorted((r.run_id, r.status.value) for r in inst.get_runs()),
                "partitions": inst.get_dynamic_partitions(segments.name),
                "status": inst.get_status_by_partition(dg.AssetKey("candidates"), registration.keys(), segments),
                "materialized": [
                    (m.partition_key, m.run_id, m.asset_materialization.metadata["candidates"].value)
                    for m in materializations
                ],
                "checks": [(c.partition, c.status.value, c.run_id) for c in check],
                "failure": error.message.splitlines()[0],
                "events": [e.dagster_event.event_type.name for e in inst.all_logs(done.run_id) if e.dagster_event],
            }

        before = state(instance)
    assert before["status"] == {
        ok_key: dg.AssetPartitionStatus.MATERIALIZED,
        failed_key: dg.AssetPartitionStatus.FAILED,
        untouched_key: None,
    }
    assert [(key, run) for key, run, _ in before["materialized"]] == [(ok_key, done.run_id)]
    assert before["materialized"][0][2] == len(sample_crawl.expected_segment(registration.files_of(ok_key)))
    # The failed run planned the checks of its segment and never ran them: its asset step failed first.
    assert sorted(before["checks"]) == [(ok_key, "SUCCEEDED", done.run_id), (failed_key, "PLANNED", failed.run_id)]
    assert "is not in" in before["failure"] and registration.files_of(failed_key)[0] in before["failure"]
    assert {
        "ASSET_MATERIALIZATION_PLANNED",
        "STEP_START",
        "ASSET_MATERIALIZATION",
        "ASSET_CHECK_EVALUATION",
        "RUN_SUCCESS",
    } <= set(before["events"])

    with dg.DagsterInstance.from_config(pg_home) as restarted:  # a new process would see the same
        assert state(restarted) == before
