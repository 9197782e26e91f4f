"""The one partitioning of the pipeline: a partition is a crawl segment, shared by every stage."""

import dagster as dg

SEGMENTS = "segments"
segments = dg.DynamicPartitionsDefinition(name=SEGMENTS)

# Dagster's storage and UI stay responsive when partitions are added in modest batches.
ADD_BATCH = 1000


def add_segments(instance: dg.DagsterInstance, keys: list[str]) -> int:
    """Add the keys not yet known to the instance, in batches; returns how many were new."""
    known = set(instance.get_dynamic_partitions(SEGMENTS))
    new = [key for key in keys if key not in known]
    for start in range(0, len(new), ADD_BATCH):
        instance.add_dynamic_partitions(SEGMENTS, new[start : start + ADD_BATCH])
    return len(new)
