"""The offline demo: a generated crawl and a local image web run through the whole pipeline, kept for `dagster dev`."""

import os
import shutil
import time
from dataclasses import dataclass

import dagster as dg

from cah_assets.crawls import register_and_add
from cah_assets.definitions import defs
from cah_assets.image_shards import ImageDownloader
from cah_resources.local_web import LocalImageWeb
from cah_resources.resources import ClipScorer
from cah_resources.resources import CommonCrawl
from cah_resources.resources import StorageResource
from cah_resources.sample_crawl import SampleCrawl, generate_crawl
from cah_resources.storage import DataRoot

HERE = os.path.dirname(os.path.abspath(__file__))
INSTANCE_YAML = os.path.join(os.path.dirname(HERE), "dagster.yaml")
STAGES = ("candidates", "image_shards", "clip_pairs")
DATASET = ("release", "report")


@dataclass
class DemoResult:
    crawl: SampleCrawl
    root: DataRoot
    segment_keys: list[str]
    instance: dg.DagsterInstance
    seconds: float


def prepare_dagster_home(path: str) -> dg.DagsterInstance:
    """A persistent instance at ``path`` (SQLite) configured by the project's dagster.yaml."""
    os.makedirs(path, exist_ok=True)
    if os.path.exists(INSTANCE_YAML) and not os.path.exists(os.path.join(path, "dagster.yaml")):
        shutil.copy(INSTANCE_YAML, os.path.join(path, "dagster.yaml"))
    os.environ["DAGSTER_HOME"] = path
    return dg.DagsterInstance.get()


def demo_resources(crawl_dir: str, data_dir: str) -> dict:
    """The code location's resources, pointed at the generated crawl, allowed onto loopback, tiny CLIP."""
    return {
        **defs.resources,
        "common_crawl": CommonCrawl(base_url=crawl_dir),
        "storage": StorageResource(root=data_dir),
        # The demo's image web lives on 127.0.0.0/8, which the downloader refuses unless allowed.
        "image_downloader": ImageDownloader(allowed_networks=["127.0.0.0/8"], shard_size=500),
        "clip_scorer": ClipScorer.tiny(),
    }


def run_pipeline(workdir: str, crawl: str = "CC-MAIN-SAMPLE", wat_files: int = 4, pages_per_file: int = 40,
                 seed: int = 0, say=print) -> DemoResult:
    """Generate, register and materialize every stage and the dataset assets; outputs under ``workdir``."""
    workdir = os.path.abspath(workdir)
    started = time.perf_counter()
    instance = prepare_dagster_home(os.path.join(workdir, "dagster_home"))
    crawl_dir, data_dir = os.path.join(workdir, "crawl"), os.path.join(workdir, "data")
    for stale in (crawl_dir, data_dir):  # a new image web gets new ports: old outputs would not match
        shutil.rmtree(stale, ignore_errors=True)
    assets = [defs.get_assets_def(name) for name in STAGES]
    with LocalImageWeb(n_hosts=6, seed=seed) as web:
        say(f"1/4 generating {wat_files} WAT files of {crawl}; images served by a local web on {web.origins[0]} and 5 more hosts")
        sample = generate_crawl(crawl_dir, crawl=crawl, wat_files=wat_files, pages_per_file=pages_per_file, seed=seed,
                                mismatch_rate=0.3, missing_rate=0.1, image_base=web.origins[:4], page_base=web.origins[4:])
        resources = demo_resources(crawl_dir, data_dir)
        registration, _ = register_and_add(instance, resources["common_crawl"], resources["storage"], crawl, files_per_segment=2)
        keys = registration.keys()
        say(f"2/4 registered {crawl}: {len(keys)} segments of {registration.files_per_segment} WAT files")
        for key in keys:
            result = dg.materialize(assets, partition_key=key, instance=instance, resources=resources)
            if not result.success:
                raise RuntimeError(f"demo: segment {key} failed; open its run in the UI (make dev)")
            say(f"3/4 {key}: " + "; ".join(_summary(result, name) for name in STAGES))
    dataset = [defs.get_assets_def(name) for name in DATASET]
    result = dg.materialize(dataset, instance=instance, resources=resources,
                            selection=list(DATASET))
    if not result.success:
        raise RuntimeError("demo: release/report failed; open the run in the UI (make dev)")
    say(f"4/4 release and report: {_summary(result, 'release')}")
    return DemoResult(sample, resources["storage"].data_root(), keys, instance, time.perf_counter() - started)


SUMMARY_KEYS = {
    "candidates": ("records_read", "candidates"),
    "image_shards": ("ok", "success_rate"),
    "clip_pairs": ("pairs_scored", "pairs_kept"),
    "release": ("pairs",),
}


def _summary(result: dg.ExecuteInProcessResult, name: str) -> str:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == name:
            meta = event.materialization.metadata
            shown = [f"{k}={meta[k].value}" for k in SUMMARY_KEYS[name] if k in meta]
            return f"{name} " + ", ".join(shown)
    return f"{name} (no materialization)"


def run_demo(workdir: str, crawl: str = "CC-MAIN-SAMPLE", wat_files: int = 4, seed: int = 0) -> int:
    outcome = run_pipeline(workdir, crawl=crawl, wat_files=wat_files, seed=seed)
    print(f"done in {outcome.seconds:.0f}s. Release: {outcome.root.path('release', crawl)}; "
          f"report: {outcome.root.path('report', crawl, 'report.md')}")
    print("Browse lineage, partitions, runs, checks and the report (asset 'report') with:")
    print(f"  DAGSTER_HOME={outcome.instance.root_directory} make dev    # then open http://127.0.0.1:3000")
    return 0
