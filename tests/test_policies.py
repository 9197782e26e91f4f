"""Run policies: what is retried and what fails at once."""

import dagster as dg

from cah_assets.definitions import defs
from cah_assets.partitions import segments
from cah_assets.resources import ComputeResource, StorageResource
from cah_assets.stages.candidates import candidates


def test_a_segment_of_an_unregistered_crawl_fails_once_with_one_line_and_no_retry(tmp_path):
    key = "CC-MAIN-NOPE_00000"
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(segments.name, [key])
    resources = {
        **defs.resources,
        "compute": ComputeResource(n_workers=1, processes=False),
        "storage": StorageResource(root=str(tmp_path / "data")),
    }

    result = dg.materialize(
        [candidates], partition_key=key, instance=instance, resources=resources, raise_on_error=False
    )

    assert not result.success
    events = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in events and events.count("STEP_START") == 1
    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.user_failure_data.description
    assert (
        message == f"segment {key}: crawl CC-MAIN-NOPE is not registered under {tmp_path / 'data'}; register it first"
    )
    assert "\n" not in message
