"""Asset checks of the three stages, one verdict per segment, blocking so that bad data does not flow on."""

import warnings
from collections import Counter
from collections.abc import Callable

import dagster as dg

# The one private Dagster import, kept on purpose (Dagster 1.13): a segment's verdict counts in the
# UI's per-segment check status, and for all_deps_blocking_checks_passed() downstream, only when it
# carries the storage id of the materialization it read; without it Dagster shows the verdict as
# stale and the next stage never starts. A multi-segment step must yield dg.AssetCheckEvaluation per
# segment, and only this private type builds that pointer (dg.AssetCheckResult has no partition
# argument and fills it in for a one-partition step only).
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from cah_assets.partitions import SEGMENTS, segments
from cah_assets.policies import WITH_ITS_ASSET
from cah_assets.resources import ComputeResource, StorageResource
from cah_resources.candidates.checks import CANDIDATES_CHECKS, check_candidates
from cah_resources.clip_pairs.checks import CLIP_PAIRS_CHECKS, check_clip_pairs
from cah_resources.contract import CANDIDATES, CLIP_PAIRS, IMAGE_SHARDS, PAGE_SCORES, PAGES
from cah_resources.image_shards.checks import IMAGE_SHARDS_CHECKS, check_image_shards
from cah_resources.page_scores.checks import PAGE_SCORES_CHECKS, check_page_scores
from cah_resources.pages.checks import PAGES_CHECKS, check_pages
from cah_resources.verdicts import Verdict


def materialization_checked(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, segment: str
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The segment's latest materialization, as the pointer its check verdict must carry (None: never made).

    A verdict counts only for the materialization it points at; a newer materialization makes it stale.
    """
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[segment]), limit=1
    ).records
    if not records:
        return None
    record = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
    )


def materialized_segments(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> list[str]:
    """The registered segments of ``asset_key`` that have a materialization, in key order."""
    made = instance.get_materialized_partitions(asset_key)
    return [key for key in instance.get_dynamic_partitions(SEGMENTS) if key in made]


def segment_checks(
    asset: str,
    descriptions: dict[str, str],
    verdicts_of: Callable[..., dict[str, Verdict]],
    automated: bool,
    reads_on_workers: bool = False,
) -> dg.AssetChecksDefinition:
    """Blocking checks of ``asset``, evaluated for every segment of the run and recorded per segment.

    ``reads_on_workers``: ``verdicts_of`` takes a ``run`` that maps its heavy reads (tars) onto the
    compute engine, so the run process reads only parquet, stats and markers from the store.
    """
    asset_key = dg.AssetKey(asset)
    # Per-partition checks are a Dagster preview; they are what lets automation hold back one bad segment.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        specs = [
            dg.AssetCheckSpec(
                name,
                asset=asset_key,
                description=text,
                blocking=True,
                partitions_def=segments,
                automation_condition=WITH_ITS_ASSET if automated else None,
            )
            for name, text in descriptions.items()
        ]

    # can_subset: each check can be executed alone from the UI (a run of the others' verdicts is not needed).
    @dg.multi_asset_check(
        specs=specs, name=f"{asset}_checks", description=f"Checks of {asset}, per segment.", can_subset=True
    )
    def _checks(context: dg.AssetCheckExecutionContext, storage: StorageResource, compute: ComputeResource):
        # A run without segments (the UI's "Execute all" on a check) checks every segment made so far.
        partitioned = context.has_partition_key or context.has_partition_key_range
        checked = context.partition_keys if partitioned else materialized_segments(context.instance, asset_key)
        if not checked:
            raise dg.Failure(f"checks of {asset} run per segment, and no segment of {asset} is materialized yet")
        root = storage.data_root()

        def on_workers(fn: Callable, units: list, **kwargs) -> list:
            return [result.value for result in compute.run_units(fn, units, **kwargs)]

        extra = {"run": on_workers} if reads_on_workers else {}
        selected = [spec for spec in specs if spec.key in context.selected_asset_check_keys]
        failed: Counter = Counter()
        for segment in checked:
            verdicts = verdicts_of(root, segment, **extra)
            target = materialization_checked(context.instance, asset_key, segment)
            for spec in selected:
                verdict = verdicts[spec.name]
                failed[spec.name] += not verdict.passed
                yield dg.AssetCheckEvaluation(
                    asset_key=asset_key,
                    check_name=spec.name,
                    passed=verdict.passed,
                    partition=segment,
                    blocking=True,
                    metadata={"segment": segment, **verdict.metadata},
                    description=verdict.description,
                    target_materialization_data=target,
                )
        if failed.total():
            context.log.error(f"{asset}: failed checks {dict(+failed)} over {len(checked)} segment(s)")
        # Downstream steps of the run wait on these outputs; a failed blocking evaluation fails the step after them.
        for spec in selected:
            yield dg.Output(
                None, output_name=context.op_execution_context.assets_def.get_output_name_for_asset_check_key(spec.key)
            )

    return _checks


candidates_checks = segment_checks(CANDIDATES, CANDIDATES_CHECKS, check_candidates, automated=False)
image_shards_checks = segment_checks(
    IMAGE_SHARDS, IMAGE_SHARDS_CHECKS, check_image_shards, automated=True, reads_on_workers=True
)
clip_pairs_checks = segment_checks(CLIP_PAIRS, CLIP_PAIRS_CHECKS, check_clip_pairs, automated=True)
pages_checks = segment_checks(PAGES, PAGES_CHECKS, check_pages, automated=False)
page_scores_checks = segment_checks(PAGE_SCORES, PAGE_SCORES_CHECKS, check_page_scores, automated=False)
