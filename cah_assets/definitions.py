"""The code location: every asset, job and resource of the pipeline, with the resource set of its deployment.

Importing it reads no environment variable: ``defs`` is built when first used (when Dagster loads the
code location), from the environment and the instance's deployment as they are then.
"""

import functools
import os

import dagster as dg

from cah_assets.automation import SEGMENT_CRON, crawl_discovery_sensor, segment_flow_sensor, segment_schedule
from cah_assets.checks import (
    candidates_checks,
    clip_pairs_checks,
    image_shards_checks,
    page_scores_checks,
    pages_checks,
)
from cah_assets.crawls import register_crawl_job
from cah_assets.dataset import release, report
from cah_assets.deployment import Deployment, read_deployment
from cah_assets.fleet import fleet_sensor
from cah_assets.resources import (
    CandidateRules,
    ClipScorer,
    CommonCrawl,
    ComputeResource,
    CrawlDiscovery,
    DedupIndexResource,
    HetznerFleet,
    ImageDownloader,
    PageRulesResource,
    ReportLinks,
    SegmentFlow,
    StorageResource,
    TextClassifier,
)
from cah_assets.stages.candidates import candidates
from cah_assets.stages.clip_pairs import clip_pairs
from cah_assets.stages.image_shards import image_shards
from cah_assets.stages.page_scores import page_scores
from cah_resources.contract import DATASET_ASSETS, PAGE_SCORES, STAGES, stage_assets
from cah_resources.crawl.common_crawl import COMMON_CRAWL_URL, CRAWL_LIST_URL

PIPELINE_JOB = "pipeline"
DATASET_JOB = "dataset"
# The demo's image web and pages live on 127.0.0.0/8, which the downloader refuses unless allowed.
DEMO_NETWORKS = ["127.0.0.0/8"]
DEMO_SHARD_SIZE = 500
# Runs are thin coordinators (the work runs on Dask): by default their steps run in the run's own process,
# which saves a Python start-up and a code load per step (a UI-launched segment run: benchmarks/README.md,
# ui_run_startup). Dagster's executor otherwise: `execution: {config: {multiprocess: {}}}` still selects it.
COORDINATOR_EXECUTOR = dg.ExecutorDefinition(
    name=dg.multi_or_in_process_executor.name,
    config_schema=dg.Field(
        dg.multi_or_in_process_executor.config_schema.as_field().config_type, default_value={"in_process": {}}
    ),
    executor_creation_fn=dg.multi_or_in_process_executor.executor_creation_fn,
    requirements=dg.multi_or_in_process_executor.get_requirements,
    description="Dagster's multi_or_in_process_executor, in process unless a run asks for multiprocess.",
)


def stage_job_name(stage: str) -> str:
    return f"{stage}_job"


def _jobs() -> list:
    """One job per stage and one for a whole segment, each with the stage's checks, plus the dataset roll-up."""
    stage_jobs = [
        dg.define_asset_job(
            stage_job_name(stage),
            selection=dg.AssetSelection.assets(*stage_assets(stage)),
            description=f"The {stage} stage of the chosen segments, and its checks.",
            executor_def=COORDINATOR_EXECUTOR,
        )
        for stage in (*STAGES, PAGE_SCORES)
    ]
    pipeline = dg.define_asset_job(
        PIPELINE_JOB,
        selection=dg.AssetSelection.assets(*(asset for stage in STAGES for asset in stage_assets(stage))),
        description="Every stage of the chosen segments in order, each with its checks.",
        executor_def=COORDINATOR_EXECUTOR,
    )
    dataset = dg.define_asset_job(
        DATASET_JOB,
        selection=dg.AssetSelection.assets(*DATASET_ASSETS),
        description="The release parquet and the report of every registered crawl.",
        executor_def=COORDINATOR_EXECUTOR,
    )
    return [*stage_jobs, pipeline, dataset, register_crawl_job]


def deployment_resources(deployment: Deployment) -> dict:
    """The resource set of a deployment: one-machine defaults (deploy/cah.env overrides them), or the demo's."""
    resources = {
        "compute": ComputeResource(),
        "common_crawl": CommonCrawl(base_url=os.environ.get("CAH_CRAWL_SOURCE", COMMON_CRAWL_URL)),
        "storage": StorageResource.from_env(os.environ.get("CAH_DATA_ROOT", "data")),
        "candidate_rules": CandidateRules(),
        "page_rules": PageRulesResource(),
        # A Postgres URL carries a password: read through EnvVar so it never shows in run config.
        "dedup_index": DedupIndexResource(url=dg.EnvVar("CAH_DEDUP_URL"))
        if os.environ.get("CAH_DEDUP_URL")
        else DedupIndexResource(),
        "image_downloader": ImageDownloader(),
        "clip_scorer": ClipScorer(),
        "text_classifier": TextClassifier(),
        "crawl_discovery": CrawlDiscovery(crawl_list=os.environ.get("CAH_CRAWL_LIST", CRAWL_LIST_URL)),
        "segment_flow": SegmentFlow(),
        "hetzner_fleet": HetznerFleet.from_env(),
        "report_links": ReportLinks(files_url=deployment.files_url),
    }
    if deployment.crawl_source:
        resources["common_crawl"] = CommonCrawl(base_url=deployment.crawl_source)
    if deployment.data_root:
        resources["storage"] = StorageResource.from_env(deployment.data_root)
    if deployment.name == "demo":
        resources["image_downloader"] = ImageDownloader(allowed_networks=DEMO_NETWORKS, shard_size=DEMO_SHARD_SIZE)
        resources["clip_scorer"] = ClipScorer.tiny()
        resources["text_classifier"] = TextClassifier.tiny()
    return resources


def build_definitions(deployment: Deployment, overrides: dict | None = None) -> dg.Definitions:
    """Every asset, check, job and sensor with the deployment's resources, ``overrides`` replacing some by key."""
    return dg.Definitions(
        assets=[candidates, image_shards, clip_pairs, page_scores, release, report],
        asset_checks=[candidates_checks, pages_checks, image_shards_checks, clip_pairs_checks, page_scores_checks],
        jobs=_jobs(),
        schedules=[segment_schedule(os.environ.get("CAH_SEGMENT_CRON", SEGMENT_CRON))],
        sensors=[crawl_discovery_sensor, segment_flow_sensor, fleet_sensor],
        resources={**deployment_resources(deployment), **(overrides or {})},
        executor=COORDINATOR_EXECUTOR,  # also the UI's ad-hoc "Materialize" runs
    )


@functools.cache
def _defs() -> dg.Definitions:
    return build_definitions(read_deployment())


def __getattr__(name: str) -> dg.Definitions:
    """``defs``, built on first use (PEP 562 module attribute): the code location Dagster loads."""
    if name == "defs":
        return _defs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "defs"])
