"""The one stage runner: a stage's declaration in, a partitioned Dagster step out (units → compute → metadata)."""

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import dask
from pydantic import Field

from cah_assets.partitions import segments
from cah_assets.policies import GPU_POOL, permanent_errors, segment_step, stops_are_final
from cah_assets.progress import SUMMARY_MARK, summary_line
from cah_resources.contract import stage_folder
from cah_resources.crawl.segments import load_registration, parse_segment_key
from cah_resources.redaction import redact_url
from cah_resources.storage import DataRoot, remove_dead_temporaries


class StageConfig(dg.Config):
    """What a person may set when launching a stage's run."""

    # A stage without markers recomputes anyway. The description is what the Launchpad shows beside the field.
    redo: bool = Field(
        default=False,
        description="Recompute the segment's finished shards or files instead of skipping them; each stays "
        "readable until its new outputs replace it",
    )


@dataclass
class StageRun:
    """One run of a stage over its segments: what a declaration's functions read and what the run produced."""

    root: DataRoot
    keys: list[str]
    resources: Any  # the run's Dagster resources by key: run.resources.compute, run.resources.storage, ...
    settings: Any = None  # the stage's settings, read once per run
    redo: bool = False
    values: dict[str, list] = field(default_factory=dict)  # per segment: what each unit run now returned
    merged: dict[str, Any] = field(default_factory=dict)  # per segment: what its merge unit returned
    seconds: float = 0.0  # wall time of the units and merges

    def all_values(self) -> list:
        return [value for key in self.keys for value in self.values.get(key, [])]


@dataclass(frozen=True)
class Output:
    """One asset a stage's step materializes, and how a segment's result (or a run's) is described."""

    name: str
    description: str  # the one line the UI shows
    describe: Callable[[StageRun, str], dict]  # one segment's metadata: its materialization, or an observation
    summarize: Callable[[StageRun], dict]  # a multi-segment run's totals (each segment is observed apart)
    kinds: frozenset[str] = frozenset({"python", "parquet", "dask"})
    deps: tuple[str, ...] = ()
    automation_condition: dg.AutomationCondition | None = None


@dataclass(frozen=True)
class Stage:
    """A stage, declared: its units, the plain function run on each, and what its outputs say.

    The runner picks each segment's units (``plan``), skips those ``is_done`` says are finished
    unless the run sets ``redo`` (then a stage that ``passes_redo`` calls ``work(unit, redo=True)``: the
    unit is made again, and its finished outputs stay readable until the new ones replace them, so a
    redo stopped part way loses nothing), hands the rest to the compute engine (``work``), then, when
    declared, one ``merge`` unit per segment; each output is described per segment and per run.
    """

    name: str  # the step's name: the asset's name when it has one output
    outputs: tuple[Output, ...]
    plan: Callable[[StageRun, str], Iterable[Any]]  # one segment's work units
    work: Callable[..., Any]  # the plain function run on each unit by the compute engine
    progress: Callable[[Any, int, int], str]  # the log line of a finished unit: (its value, done, total)
    unit_noun: str = "units"  # what the units are, in the run's log
    resources: tuple[str, ...] = ()  # Dagster resources read beside compute and storage
    settings: Callable[[Any], Any] | None = None  # resources → settings, read once; work gets them as settings=
    is_done: Callable[[Any], bool] | None = None  # a unit finished by an earlier run, skipped unless redo
    passes_redo: bool = False  # a redo run calls work(unit, redo=True): a finished unit is made again
    formats: tuple[str, ...] | None = None  # the registration formats whose segments it takes (None: any)
    merge: Callable[[StageRun], list] | None = None  # one unit per segment (run.keys order), after the work
    merge_work: Callable[..., Any] | None = None  # the plain function run on each merge unit
    run_metadata: Callable[[StageRun], dict] = lambda run: {}  # what a run adds beside its segments' (speed)
    gpu: bool = False  # ask the cluster for a GPU per unit, and take a slot of Dagster's gpu pool
    dask_config: Mapping[str, Any] = field(default_factory=dict)  # Dask settings while the units run
    retry_policy: dg.RetryPolicy | None = None


def _check_formats(stage: Stage, root: DataRoot, keys: list[str]) -> None:
    """A segment of a format the stage does not take (clip_pairs of a dataset of pages) fails in one line.

    Each crawl's plan is read once, however many of its segments the run holds (a real crawl's plan
    lists some 90,000 files)."""
    if stage.formats is None:
        return
    crawls: dict[str, str] = {}  # crawl -> its first key in the run
    for key in keys:
        try:
            crawls.setdefault(parse_segment_key(key)[0], key)
        except ValueError:  # not a segment key: the plan says what is wrong
            continue
    for crawl, key in crawls.items():
        registration = load_registration(root, crawl)
        if registration is not None and registration.format not in stage.formats:
            raise ValueError(
                f"{stage.name} does not apply to {key}: {registration.crawl} is registered as "
                f"{registration.format}, and {stage.name} takes {' or '.join(stage.formats)} segments"
            )


def run_stage(stage: Stage, run: StageRun, log: Callable[[str], None]) -> StageRun:
    """Run ``stage`` over ``run.keys`` on the compute engine; fills ``run.values``, ``run.merged``, ``run.seconds``."""
    compute = run.resources.compute
    with permanent_errors():  # a crawl not registered, an upstream stage not made: fail now, retrying cannot help
        _check_formats(stage, run.root, run.keys)
        planned = [(key, unit) for key in run.keys for unit in stage.plan(run, key)]
    todo = [(key, unit) for key, unit in planned if run.redo or stage.is_done is None or not stage.is_done(unit)]
    # GPU workers when the cluster has them; CPU workers otherwise (compute.allow_cpu_fallback).
    resources = compute.gpu_resources() if stage.gpu else None
    skipped = "" if stage.is_done is None else f", {len(planned) - len(todo)} already done"
    device = f" on {'GPU' if resources else 'CPU'} workers" if stage.gpu else ""
    units = f"{len(planned)} {stage.unit_noun}{skipped}, {len(todo)} to the compute engine{device}"
    log(f"{len(run.keys)} segment(s): {units}")
    # Writers killed mid-write (a stop, a lost worker) leave temporary files that no later run of a
    # finished unit would remove.
    folders = [stage_folder(run.root, output.name, key) for key in run.keys for output in stage.outputs]
    swept = [path for folder in folders for path in remove_dead_temporaries(run.root, folder)]
    if swept:
        log(f"removed {len(swept)} temporary files of stopped writers (first: {redact_url(swept[0])})")
    kwargs: dict[str, Any] = {} if stage.settings is None else {"settings": run.settings}
    if run.redo and stage.passes_redo:
        kwargs["redo"] = True
    started = time.perf_counter()
    with dask.config.set(dict(stage.dask_config)):
        results = compute.run_units(
            stage.work,
            [unit for _, unit in todo],
            on_result=lambda result, done, total: log(stage.progress(result.value, done, total)),
            on_progress=log,
            resources=resources,
            **kwargs,
        )
    run.values = {key: [] for key in run.keys}
    for (key, _), result in zip(todo, results, strict=True):
        run.values[key].append(result.value)
    if stage.merge is not None:
        merged = compute.run_units(stage.merge_work, stage.merge(run))
        run.merged = dict(zip(run.keys, (result.value for result in merged), strict=True))
    run.seconds = time.perf_counter() - started
    return run


def report(context: dg.AssetExecutionContext, stage: Stage, run: StageRun) -> Iterable[dg.MaterializeResult]:
    """Each output's metadata: one segment's own, or a run's totals with an observation per segment."""
    extra = stage.run_metadata(run)
    for output in stage.outputs:
        key = dg.AssetKey(output.name)
        if key not in context.selected_asset_keys:  # written by the same pass, but not asked for: not reported
            continue
        if len(run.keys) == 1:
            metadata = {**output.describe(run, run.keys[0]), **extra}
        else:
            for segment in run.keys:
                context.log_event(dg.AssetObservation(key, partition=segment, metadata=output.describe(run, segment)))
            metadata = {**output.summarize(run), **extra}
        shown = run.keys[0] if len(run.keys) == 1 else f"{run.keys[0]}..{run.keys[-1]}"
        context.log.info(f"{SUMMARY_MARK}{shown} {summary_line(output.name, metadata)}")
        yield dg.MaterializeResult(asset_key=key, metadata=metadata)


def stage_asset(stage: Stage) -> dg.AssetsDefinition:
    """The partitioned Dagster step of ``stage``: every output materialized together, from one pass."""
    specs = [
        dg.AssetSpec(
            output.name,
            description=output.description,
            deps=output.deps,
            kinds=set(output.kinds),
            group_name="pipeline",
            automation_condition=output.automation_condition,
        )
        for output in stage.outputs
    ]

    # can_subset: one pass writes every output, but a run may ask for one of them (`candidates` without
    # `pages`); it materializes what was asked for.
    @segment_step(
        specs=specs,
        can_subset=True,
        name=stage.name,
        partitions_def=segments,
        required_resource_keys={"compute", "storage", *stage.resources},
        retry_policy=stage.retry_policy,
        pool=GPU_POOL if stage.gpu else None,
    )
    def _step(context: dg.AssetExecutionContext, config: StageConfig):
        resources = context.resources
        with stops_are_final():
            run = StageRun(
                root=resources.storage.data_root(),
                keys=list(context.partition_keys),
                resources=resources,
                settings=None if stage.settings is None else stage.settings(resources),
                redo=config.redo,
            )
            yield from report(context, stage, run_stage(stage, run, context.log.info))

    return _step
