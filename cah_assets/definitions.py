"""The code location: every asset, job and resource of the pipeline, with one-machine defaults."""

import os

import dagster as dg

from cah_assets.automation import CRAWL_LIST_URL, CrawlDiscovery, SegmentFlow, crawl_discovery_sensor, segment_flow_sensor, segment_schedule
from cah_assets.candidates import candidates
from cah_assets.checks import candidates_checks, clip_pairs_checks, image_shards_checks
from cah_assets.clip_pairs import clip_pairs
from cah_assets.crawls import register_crawl_job
from cah_assets.dataset import release, report
from cah_assets.fleet import fleet_sensor
from cah_assets.image_shards import ImageDownloader, image_shards
from cah_resources.candidate_rules import CandidateRules
from cah_resources.common_crawl import COMMON_CRAWL_URL
from cah_resources.compute import ComputeResource
from cah_resources.dedup_index import DedupIndexResource
from cah_resources.hetzner import HetznerFleet
from cah_resources.resources import ClipScorer
from cah_resources.resources import CommonCrawl
from cah_resources.resources import StorageResource

defs = dg.Definitions(
    assets=[candidates, image_shards, clip_pairs, release, report],
    asset_checks=[candidates_checks, image_shards_checks, clip_pairs_checks],
    jobs=[register_crawl_job],
    schedules=[segment_schedule],
    sensors=[crawl_discovery_sensor, segment_flow_sensor, fleet_sensor],
    resources={
        "compute": ComputeResource(),
        "common_crawl": CommonCrawl(base_url=os.environ.get("CAH_CRAWL_SOURCE", COMMON_CRAWL_URL)),
        "storage": StorageResource.from_env(os.environ.get("CAH_DATA_ROOT", "data")),
        "candidate_rules": CandidateRules(),
        # A Postgres URL carries a password: read through EnvVar so it never shows in run config.
        "dedup_index": DedupIndexResource(url=dg.EnvVar("CAH_DEDUP_URL")) if os.environ.get("CAH_DEDUP_URL") else DedupIndexResource(),
        "image_downloader": ImageDownloader(),
        "clip_scorer": ClipScorer(),
        "crawl_discovery": CrawlDiscovery(crawl_list=os.environ.get("CAH_CRAWL_LIST", CRAWL_LIST_URL)),
        "segment_flow": SegmentFlow(),
        "hetzner_fleet": HetznerFleet.from_env(),
    },
)
