"""The offline demo: a generated crawl run through the real pipeline on this machine, kept for `dagster dev`."""

import os
import shutil
import time

import dagster as dg

from cah_assets.crawls import register_and_add
from cah_assets.definitions import defs
from cah_resources.common_crawl import CommonCrawl
from cah_resources.sample_crawl import generate_crawl
from cah_resources.storage import StorageResource

HERE = os.path.dirname(os.path.abspath(__file__))
INSTANCE_YAML = os.path.join(os.path.dirname(HERE), "dagster.yaml")


def prepare_dagster_home(path: str) -> dg.DagsterInstance:
    """A persistent instance at ``path`` (SQLite) configured by the project's dagster.yaml."""
    os.makedirs(path, exist_ok=True)
    if os.path.exists(INSTANCE_YAML) and not os.path.exists(os.path.join(path, "dagster.yaml")):
        shutil.copy(INSTANCE_YAML, os.path.join(path, "dagster.yaml"))
    os.environ["DAGSTER_HOME"] = path
    return dg.DagsterInstance.get()


def run_demo(workdir: str, crawl: str = "CC-MAIN-SAMPLE", wat_files: int = 4, seed: int = 0) -> int:
    workdir = os.path.abspath(workdir)
    started = time.perf_counter()
    instance = prepare_dagster_home(os.path.join(workdir, "dagster_home"))
    crawl_dir = os.path.join(workdir, "crawl")
    print(f"1/3 generating {wat_files} WAT files of {crawl} under {crawl_dir}")
    generate_crawl(crawl_dir, crawl=crawl, wat_files=wat_files, pages_per_file=60, seed=seed)
    common_crawl = CommonCrawl(base_url=crawl_dir)
    storage = StorageResource(root=os.path.join(workdir, "data"))
    registration, _ = register_and_add(instance, common_crawl, storage, crawl, files_per_segment=2)
    print(f"2/3 registered {crawl}: {registration.segment_count} segments of {registration.files_per_segment} WAT files")
    resources = {**defs.resources, "common_crawl": common_crawl, "storage": storage}
    assets = [defs.get_assets_def("candidates")]
    for key in registration.keys():
        result = dg.materialize(assets, partition_key=key, instance=instance, resources=resources)
        if not result.success:
            print(f"demo: {key} failed; see the run in the UI")
            return 1
        for materialization in result.get_asset_materialization_events():
            meta = materialization.materialization.metadata
            name = materialization.asset_key.to_user_string()
            print(f"3/3 {key} {name}: " + ", ".join(
                f"{k}={meta[k].value}" for k in ("records_read", "candidates", "candidates_en", "candidates_multi", "candidates_nolang") if k in meta))
    print(f"done in {time.perf_counter() - started:.0f}s. Browse lineage, partitions and runs with:")
    print(f"  DAGSTER_HOME={instance.root_directory} make dev    # then open http://127.0.0.1:3000")
    return 0
