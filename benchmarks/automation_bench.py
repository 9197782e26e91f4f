"""Cost of one automation tick over a crawl's worth of segments: the capped follow-upstream condition vs Dagster's own.

    .venv/bin/python benchmarks/automation_bench.py                   # 2000 segments, 500 of them new upstream
    .venv/bin/python benchmarks/automation_bench.py --segments 5000 --updated 2000

An instance (SQLite, temporary) holds ``--segments`` partitions; after the automation sensor's
first tick, ``--updated`` of them get a candidates materialization and passing checks (reported
to the instance, as a run would). Then the tick that follows is timed, on the same state, for:

- reference: image_shards and clip_pairs with ``eager() & all_deps_blocking_checks_passed()``,
  Dagster's built-in conditions, uncapped (it requests every updated segment at once);
- capped: the same under ``CappedCondition`` (cah_assets/policies.py), as the code location has it.

Figures: seconds per tick, best of ``--repeats``, the capped tick as a multiple of the reference,
and how many segments each requests.
"""

import argparse
import tempfile
import time
import warnings

import dagster as dg

from cah_assets.checks import (
    CANDIDATES_CHECKS,
    candidates_checks,
    clip_pairs_checks,
    image_shards_checks,
    materialization_checked,
)
from cah_assets.definitions import defs
from cah_assets.partitions import segments
from cah_assets.policies import FOLLOWS_UPSTREAM
from cah_assets.stages.candidates import candidates
from cah_assets.stages.clip_pairs import clip_pairs
from cah_assets.stages.image_shards import image_shards
from cah_resources.contract import STAGES

LATER = STAGES[1:]  # the stages that follow their upstream


def variant(condition: dg.AutomationCondition) -> dg.Definitions:
    assets = [
        candidates,
        image_shards.map_asset_specs(lambda s: s.replace_attributes(automation_condition=condition)),
        clip_pairs.map_asset_specs(lambda s: s.replace_attributes(automation_condition=condition)),
    ]
    return dg.Definitions(
        assets=assets,
        asset_checks=[candidates_checks, image_shards_checks, clip_pairs_checks],
        resources=defs.resources,
    )


def report_upstream(instance: dg.DagsterInstance, keys: list[str]) -> None:
    for key in keys:
        instance.report_runless_asset_event(dg.AssetMaterialization("candidates", partition=key))
        target = materialization_checked(instance, dg.AssetKey("candidates"), key)
        for name in CANDIDATES_CHECKS:
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(
                    asset_key=dg.AssetKey("candidates"),
                    check_name=name,
                    passed=True,
                    partition=key,
                    blocking=True,
                    target_materialization_data=target,
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=2000)
    parser.add_argument("--updated", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    variants = {
        "reference": variant(dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()),
        "capped": variant(FOLLOWS_UPSTREAM),
    }
    with tempfile.TemporaryDirectory() as home, dg.DagsterInstance.local_temp(home) as instance:
        keys = [f"CC-MAIN-2024-10_{i:05d}" for i in range(args.segments)]
        instance.add_dynamic_partitions(segments.name, keys)
        cursors = {
            name: dg.evaluate_automation_conditions(defs=d, instance=instance).cursor for name, d in variants.items()
        }
        started = time.perf_counter()
        report_upstream(instance, keys[: args.updated])
        print(
            f"{args.segments} segments, {args.updated} with new upstream "
            f"(reported in {time.perf_counter() - started:.1f} s)"
        )
        best, requested = {}, {}
        for _ in range(args.repeats):
            for name, definitions in variants.items():
                started = time.perf_counter()
                result = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=cursors[name])
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
                requested[name] = {a: len(result.get_requested_partitions(dg.AssetKey(a))) for a in LATER}
        for name in variants:
            print(f"{name:>9}: {best[name]:.2f} s per tick, requests {requested[name]}")
        print(f"capped tick = {best['capped'] / best['reference']:.2f} x the reference")


if __name__ == "__main__":
    main()
