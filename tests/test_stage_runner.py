"""The stage runner: one pass may materialize two assets; a range records each segment; finished units wait."""

import dataclasses
import os
import signal
import socket
import subprocess
import threading
import time

import dagster as dg
import pytest

from cah_assets.partitions import segments
from cah_assets.policies import STOPPED, RunStopped, raise_unless_succeeded, was_stopped
from cah_assets.resources import StorageResource
from cah_assets.stages.runner import Output, Stage, StageRun, stage_asset
from cah_resources.storage import TEMPORARY

KEYS = ["CC-MAIN-TOY_00000", "CC-MAIN-TOY_00001"]
DONE = "words/CC-MAIN-TOY_00000-1"  # a unit an earlier run finished
STOP_WAIT_S = 60  # the longest a stopped unit waits to be released


def words(run: StageRun, key: str) -> list[str]:
    return [f"words/{key}-{i}" for i in range(3)]


def count_letters(unit: str) -> dict:
    return {"unit": unit, "letters": sum(c.isalpha() for c in unit)}


def describe_units(run: StageRun, key: str) -> dict:
    return {"units_run": len(run.values[key])}


def describe_letters(run: StageRun, key: str) -> dict:
    return {"letters": sum(v["letters"] for v in run.values[key])}


TOY = Stage(
    name="toy",
    outputs=(
        Output("toy_units", "Units run per segment.", describe_units, lambda run: {"segments": len(run.keys)}),
        Output("toy_letters", "Letters per segment.", describe_letters, lambda run: {"segments": len(run.keys)}),
    ),
    plan=words,
    is_done=lambda unit: unit == DONE,
    work=count_letters,
    progress=lambda value, done, total: f"{done}/{total} {value['unit']}",
    run_metadata=lambda run: {"units_run_now": len(run.all_values())},
)
toy = stage_asset(TOY)


def _materialize(tmp_path, local_compute, run_config=None, selection=None, instance=None):
    instance = instance or dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(segments.name, KEYS)
    return dg.materialize(
        [toy],
        instance=instance,
        resources={"compute": local_compute, "storage": StorageResource(root=str(tmp_path / "data"))},
        tags={"dagster/asset_partition_range_start": KEYS[0], "dagster/asset_partition_range_end": KEYS[-1]},
        run_config=run_config,
        selection=selection,
    )


def test_one_pass_materializes_both_outputs_and_observes_each_segment_of_a_range(tmp_path, local_compute):
    result = _materialize(tmp_path, local_compute)
    assert result.success
    made = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert set(made) == {"toy_units", "toy_letters"}
    assert made["toy_units"]["segments"].value == 2 and made["toy_units"]["units_run_now"].value == 5
    observed = {
        (e.asset_key.to_user_string(), e.event_specific_data.asset_observation.partition): (
            e.event_specific_data.asset_observation.metadata
        )
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    }
    assert observed[("toy_units", KEYS[0])]["units_run"].value == 2  # the finished unit waited
    assert observed[("toy_units", KEYS[1])]["units_run"].value == 3
    assert observed[("toy_letters", KEYS[1])]["letters"].value == 3 * sum(c.isalpha() for c in "words/CC-MAIN-TOY_")


def test_a_run_may_ask_for_one_output_of_a_pass(tmp_path, local_compute):
    result = _materialize(tmp_path, local_compute, selection=["toy_units"])  # `candidates` without `pages`
    assert result.success
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == {"toy_units"}


def test_a_redo_run_takes_finished_units_too(tmp_path, local_compute):
    result = _materialize(tmp_path, local_compute, {"ops": {"toy": {"config": {"redo": True}}}})
    metadata = result.asset_materializations_for_node("toy")[0].metadata
    assert metadata["units_run_now"].value == 6


def test_a_run_removes_the_temporary_files_of_dead_writers_and_only_those(tmp_path, local_compute):
    """A writer killed mid-write leaves its temporary file; a finished unit is never written again."""
    folder = tmp_path / "data" / "toy_units" / KEYS[0] / "kept"
    folder.mkdir(parents=True)
    here = socket.gethostname()
    names = {
        "dead": f"00000.tar{TEMPORARY}{here}~{_exited_pid()}~a",
        "alive": f"00001.tar{TEMPORARY}{here}~{os.getpid()}~b",  # this process: a writer at work
        "old_elsewhere": f"00002.parquet{TEMPORARY}other-host~1~c",
        "new_elsewhere": f"00003.parquet{TEMPORARY}other-host~1~d",
        "published": "00004.parquet",
    }
    for name in names.values():
        (folder / name).write_bytes(b"x")
    hours_ago = time.time() - 2 * 3600
    os.utime(folder / names["old_elsewhere"], (hours_ago, hours_ago))

    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(tmp_path, local_compute, instance=instance)

    assert result.success
    assert sorted(p.name for p in folder.iterdir()) == sorted(names[k] for k in ("alive", "new_elsewhere", "published"))
    logged = [e.user_message for e in instance.all_logs(result.run_id) if "temporary files" in e.user_message]
    assert any("removed 2 temporary files of stopped writers" in m for m in logged), logged


def _exited_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_gpu_stage_takes_a_slot_of_the_gpu_pool():
    gpu = stage_asset(dataclasses.replace(TOY, name="toy_gpu", gpu=True))
    assert gpu.op.pool == "gpu" and toy.op.pool is None


STARTED, RELEASE = threading.Event(), threading.Event()


def wait_for_release(unit: str) -> dict:
    STARTED.set()
    RELEASE.wait(STOP_WAIT_S)
    return {"unit": unit, "letters": 0}


def test_a_stopped_step_fails_for_good_instead_of_meeting_its_retry_policy(tmp_path, local_compute):
    """Ctrl-C, SIGTERM or the UI's Terminate interrupt the run's process: the step must not retry and go on."""
    waiting = stage_asset(
        dataclasses.replace(
            TOY, name="toy_waiting", work=wait_for_release, is_done=None, retry_policy=dg.RetryPolicy(max_retries=2)
        )
    )
    STARTED.clear(), RELEASE.clear()

    def stop_once_started() -> None:
        if STARTED.wait(STOP_WAIT_S):
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C, or Dagster's termination thread, would
            time.sleep(1)  # the main thread takes it first; then the unit may end (a retry would start another)
            RELEASE.set()

    stopper = threading.Thread(target=stop_once_started, daemon=True)
    stopper.start()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(segments.name, KEYS)
    try:
        result = dg.materialize(
            [waiting],
            instance=instance,
            resources={"compute": local_compute, "storage": StorageResource(root=str(tmp_path / "data"))},
            partition_key=KEYS[0],
            raise_on_error=False,
        )
    finally:
        RELEASE.set()
        stopper.join(timeout=5)
    types = [e.event_type for e in result.all_events]
    assert not result.success
    assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in types and dg.DagsterEventType.STEP_RESTARTED not in types
    (failure,) = [e.step_failure_data for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failure.user_failure_data.description == STOPPED
    assert was_stopped(result)
    # What `cah demo` (and `cah materialize`) then say, in one line, before stopping with status 130.
    expected = f"stopped in segment {KEYS[0]} (run {result.run_id[:8]}); finished units are kept; run it again to go on"
    with pytest.raises(RunStopped) as stopped:
        raise_unless_succeeded(result, f"segment {KEYS[0]}")
    assert str(stopped.value) == expected


def test_the_launchpad_describes_redo_where_a_person_sets_it():
    from cah_assets.definitions import defs

    job = defs.resolve_job_def("image_shards_job")
    ops = job.run_config_schema.config_type.fields["ops"].config_type.fields
    redo = ops["image_shards"].config_type.fields["config"].config_type.fields["redo"]
    assert redo.default_value is False
    assert redo.description.startswith("Recompute the segment's finished shards or files instead of skipping them")


def test_a_runs_segments_of_one_crawl_have_their_format_checked_from_one_read_of_its_plan(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cah_assets.stages import runner
    from cah_assets.stages.clip_pairs import CLIP_PAIRS_STAGE
    from cah_resources.crawl.segments import load_registration, register_dataset
    from cah_resources.storage import DataRoot

    root = DataRoot(str(tmp_path / "data"))
    (tmp_path / "pages").mkdir()
    for i in range(3):
        pq.write_table(pa.table({"text": [f"page {i}"]}), tmp_path / "pages" / f"{i}.parquet")
    keys = register_dataset(root, "pages", [str(tmp_path / "pages" / "*.parquet")], files_per_segment=1).keys()
    reads = []
    monkeypatch.setattr(runner, "load_registration", lambda *args: reads.append(args) or load_registration(*args))
    with pytest.raises(ValueError, match=f"^clip_pairs does not apply to {keys[0]}: pages is registered as parquet"):
        runner._check_formats(CLIP_PAIRS_STAGE, root, keys)
    assert len(keys) == 3 and len(reads) == 1
