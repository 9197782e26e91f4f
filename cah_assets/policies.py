"""How each stage is retried, backfilled, pooled and automated: the one home of the pipeline's run policies."""

import contextlib
import warnings
from collections.abc import Callable, Iterator

import dagster as dg

# Stage 1 reads WAT files over HTTPS/S3; the reader already retries a broken download, so a step
# that still fails met something bigger (a lost Dask cluster, an outage): wait, then try again.
CANDIDATES_RETRY = dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
# Stage 2 talks to the whole web; finished shards are never redone, so a retry costs only what failed.
IMAGE_SHARDS_RETRY = dg.RetryPolicy(
    max_retries=5, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
# Stage 3 is local compute: one retry covers a lost GPU executor; more would repeat a real bug.
CLIP_PAIRS_RETRY = dg.RetryPolicy(max_retries=1, delay=15)
# page_scores is model compute too (a dataset's files read from the store are retried by fsspec's clients).
PAGE_SCORES_RETRY = CLIP_PAIRS_RETRY

# A range backfill runs this many segments per run; each run hands all their work units to Dask at once.
SEGMENTS_PER_RUN = 8
SEGMENT_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=SEGMENTS_PER_RUN)

# What a segment's planning raises when the configuration or the input is wrong (a crawl not registered, an
# upstream stage not materialized, a bad key): trying again cannot help, so it fails at once, never retried.
PERMANENT_ERRORS = (ValueError, KeyError, FileNotFoundError)


@contextlib.contextmanager
def permanent_errors() -> Iterator[None]:
    """Turn a configuration or input error into a one-line ``dg.Failure`` that the RetryPolicy does not retry."""
    try:
        yield
    except PERMANENT_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        raise dg.Failure(str(message), allow_retries=False) from None


# A run stopped on purpose fails its step with this, never retried (the units it finished are kept).
STOPPED = "stopped on request (Ctrl-C, SIGTERM or Terminate): finished units are kept; run it again to go on"


def stop_message(where: str, run_id: str) -> str:
    """What a command says when a run it waits on was stopped: where, which run, and how to go on."""
    return f"stopped in {where} (run {run_id[:8]}); {STOPPED.split(': ', 1)[1]}"


class RunStopped(RuntimeError):
    """A run that a command waits on was stopped on request: the command stops too (status 130)."""


def raise_unless_succeeded(result: dg.ExecuteInProcessResult | dg.JobExecutionResult, where: str) -> None:
    """RunStopped (where, the run, how to go on) for a stopped run; RuntimeError naming it for a failed one."""
    if result.success:
        return
    if was_stopped(result):
        raise RunStopped(stop_message(where, result.run_id))
    raise RuntimeError(f"{where} failed in run {result.run_id}; open it in the UI (make dev)")


@contextlib.contextmanager
def stops_are_final() -> Iterator[None]:
    """Make a stop (Ctrl-C, SIGTERM, the UI's Terminate) fail the step for good.

    Dagster hands an interrupted step to its RetryPolicy, and a run whose steps run in its own process
    (the default here) then sleeps out the delay and goes on: the stop would cost a retry, not stop it.
    """
    try:
        yield
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
        raise dg.Failure(STOPPED, allow_retries=False) from None


def was_stopped(result: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> bool:
    """Whether a run failed because it was stopped on request, in a step or between steps."""
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            failure = event.step_failure_data
            described = failure.user_failure_data.description if failure.user_failure_data else None
            interrupted = failure.error is not None and failure.error.cls_name == "DagsterExecutionInterruptedError"
            if described == STOPPED or interrupted:
                return True
    return False


def segment_step(**kwargs) -> Callable[..., dg.AssetsDefinition]:
    """``dg.multi_asset`` of a stage: partitioned by segment, a range backfill split into runs of SEGMENTS_PER_RUN."""
    with warnings.catch_warnings():
        # backfill_policy is marked beta in Dagster 1.x; it is what splits a range into runs, and the
        # warning would reach every `cah` and `dagster` user at import, with nothing for them to do.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.multi_asset(backfill_policy=SEGMENT_BACKFILL, **kwargs)


# Steps that need a GPU take a slot of this pool (its limit is in dagster.yaml: pools > default_limit).
GPU_POOL = "gpu"

# Automation never requests more than this many segments of a stage in one tick, nor lets more than
# MAX_IN_FLIGHT of them run at once: turning a paused sensor back on cannot flood the cluster.
# MAX_IN_FLIGHT is the pipeline's one in-flight cap: the segment schedule keeps it too.
MAX_REQUESTS_PER_TICK = 4
MAX_IN_FLIGHT = 8


class CappedCondition(dg.AutomationCondition):
    """``operand``, but true for at most ``per_tick`` partitions per tick and ``in_flight`` running at once.

    The partitions left out stay true in ``operand`` (``since_last_handled`` resets only on a
    request), so they are requested on later ticks, in key order: oldest crawl and segment first.
    """

    def __init__(self, operand: dg.AutomationCondition, per_tick: int, in_flight: int) -> None:
        if per_tick < 1 or in_flight < 1:
            raise ValueError(f"automation caps must be at least 1 (per_tick={per_tick}, in_flight={in_flight})")
        self.operand = operand
        self.per_tick = per_tick
        self.in_flight = in_flight

    @property
    def name(self) -> str:
        return f"capped({self.per_tick} per tick, {self.in_flight} in flight)"

    @property
    def description(self) -> str:
        return f"At most {self.per_tick} partitions per tick and {self.in_flight} running at once of:"

    @property
    def children(self) -> list[dg.AutomationCondition]:
        return [self.operand, dg.AutomationCondition.run_in_progress()]

    # Dagster awaits evaluate() and its own operators define it async, but the base class declares it sync.
    async def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:  # type: ignore[override]
        view = context.asset_graph_view
        wanted = await context.for_child_condition(
            self.operand, child_indices=[0], candidate_subset=context.candidate_subset
        ).evaluate_async()
        running = await context.for_child_condition(
            self.children[1], child_indices=[1], candidate_subset=view.get_full_subset(key=context.key)
        ).evaluate_async()
        room = max(0, min(self.per_tick, self.in_flight - running.true_subset.size))
        partitions_def = context.partitions_def
        if not wanted.true_subset.is_partitioned or partitions_def is None:
            allowed = wanted.true_subset if room else view.get_empty_subset(key=context.key)
        else:
            keys = sorted(wanted.true_subset.expensively_compute_partition_keys())[:room]
            allowed = view.get_subset_from_partition_keys(context.key, partitions_def, set(keys))
        return dg.AutomationResult(context, allowed, child_results=[wanted, running])


def follows_upstream(per_tick: int = MAX_REQUESTS_PER_TICK, in_flight: int = MAX_IN_FLIGHT) -> dg.AutomationCondition:
    """A segment of a later stage runs once its upstream segment is new and passed its blocking checks."""
    return CappedCondition(
        dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(), per_tick, in_flight
    )


FOLLOWS_UPSTREAM = follows_upstream()
# A check of a later stage runs in the same run as the segment it checks.
WITH_ITS_ASSET = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested())
