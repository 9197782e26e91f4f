"""The offline demo: a generated crawl and a local image web run through the whole pipeline, kept for `cah dev`."""

import contextlib
import functools
import http.server
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import dagster as dg

from cah_assets.crawls import register_and_add
from cah_assets.definitions import DATASET_JOB, PIPELINE_JOB, build_definitions, stage_job_name
from cah_assets.deployment import Deployment, write_deployment
from cah_assets.launch import run_job
from cah_assets.policies import raise_unless_succeeded
from cah_assets.progress import (
    QUIET_RUN_CONFIG,
    quiet_console,
    run_summary,
    stage_progress,
)
from cah_resources.contract import FORMAT_PARQUET, FORMAT_WARC, PAGE_SCORES, PAGES, RELEASE, STAGES
from cah_resources.crawl.segments import CrawlRegistration
from cah_resources.samples.local_web import LocalImageWeb
from cah_resources.samples.sample_crawl import SampleCrawl, generate_crawl
from cah_resources.samples.sample_pages import write_page_dataset
from cah_resources.samples.sample_warc import SampleWarcCrawl, generate_warc_crawl
from cah_resources.storage import DataRoot

HERE = os.path.dirname(os.path.abspath(__file__))
INSTANCE_YAML = os.path.join(os.path.dirname(HERE), "dagster.yaml")
DEMO_CRAWL = "CC-MAIN-SAMPLE"
DEMO_WARC_CRAWL = "CC-MAIN-SAMPLE-WARC"  # the WARC crawl run beside the WAT one: images and page text from HTML
DEMO_WARC_IMAGE_IDS = 10**6  # its image names start here, so no pair of the WAT crawl repeats in it
DEMO_DATASET = "pages-sample"  # a small Parquet dataset of generated pages, scored by the tiny text classifier
WEB_HOSTS = 6  # the first four serve images, the last two the pages that link them


@dataclass
class DemoResult:
    crawl: SampleCrawl
    root: DataRoot
    segment_keys: list[str]  # the WAT crawl's
    instance: dg.DagsterInstance
    seconds: float
    deployment: Deployment
    warc_crawl: SampleWarcCrawl | None = None
    warc_keys: list[str] = field(default_factory=list)


def generate_demo_crawl(
    folder: str, web: LocalImageWeb, crawl: str, wat_files: int, pages_per_file: int, seed: int
) -> SampleCrawl:
    """The demo's crawl: image links on ``web``'s first four hosts, pages on the rest; 30% of the alt
    texts describe another picture and 10% of the images are missing, so thresholds and 404s show."""
    return generate_crawl(
        folder,
        crawl=crawl,
        wat_files=wat_files,
        pages_per_file=pages_per_file,
        seed=seed,
        mismatch_rate=0.3,
        missing_rate=0.1,
        image_base=web.origins[:4],
        page_base=web.origins[4:],
    )


def generate_demo_warc_crawl(
    folder: str, web: LocalImageWeb, warc_files: int, pages_per_file: int, seed: int
) -> SampleWarcCrawl:
    """The demo's WARC crawl: realistic pages on ``web``'s last hosts whose images (lazy, srcset, <picture>,
    <noscript>) are on its first four, with the WAT crawl's share of wrong captions and missing images."""
    return generate_warc_crawl(
        folder,
        DEMO_WARC_CRAWL,
        warc_files=warc_files,
        pages_per_file=pages_per_file,
        images_per_page=6,
        seed=seed,
        mismatch_rate=0.3,
        missing_rate=0.1,
        image_base=web.origins[:4],
        page_base=web.origins[4:],
        first_image_id=DEMO_WARC_IMAGE_IDS,
    )


def prepare_dagster_home(path: str) -> dg.DagsterInstance:
    """A persistent instance at ``path`` (SQLite) configured by the project's dagster.yaml.

    The demo's instance always takes the project's current dagster.yaml (its run coordinator among
    others): a copy left by an earlier demo is replaced.
    """
    os.makedirs(path, exist_ok=True)
    if os.path.exists(INSTANCE_YAML):
        shutil.copy(INSTANCE_YAML, os.path.join(path, "dagster.yaml"))
    os.environ["DAGSTER_HOME"] = path
    return dg.DagsterInstance.get()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the UI fetches plots often; the terminal stays the user's
        pass


@contextlib.contextmanager
def file_server(folder: str, port: int = 0) -> Iterator[str]:
    """Serve ``folder`` read-only on 127.0.0.1 (the report's plots, shown by the UI); yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_QuietFiles, directory=folder))
    thread = threading.Thread(target=server.serve_forever, name="cah-files", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@contextlib.contextmanager
def serve_demo(deployment: Deployment) -> Iterator[Deployment]:
    """The demo's image web and file server again, on the addresses its crawl and report recorded."""
    try:
        web = LocalImageWeb(
            n_hosts=len(deployment.web_hosts), seed=deployment.web_seed, ports=[_port(h) for h in deployment.web_hosts]
        ).start()
    except OSError as error:
        raise OSError(
            f"the demo's image web cannot listen on its recorded ports ({error.strerror}): "
            "stop what holds them, or run `make demo` again"
        ) from None
    try:
        with file_server(deployment.data_root, _port(deployment.files_url)):
            yield deployment
    finally:
        web.stop()


def _segments(registration: CrawlRegistration, kind: str) -> str:
    """ "2 segments of 2 WAT files each", "1 segment of 2 WARC files"."""
    n, files = registration.segment_count, registration.files_per_segment
    return f"{n} segment of {files} {kind} files" if n == 1 else f"{n} segments of {files} {kind} files each"


def run_pipeline(
    workdir: str,
    crawl: str = DEMO_CRAWL,
    wat_files: int = 4,
    pages_per_file: int = 40,
    seed: int = 0,
    say: Callable[[str], None] = print,
    show_progress: bool = False,
    warc_files: int = 0,
) -> DemoResult:
    """Generate, register and materialize every stage, its checks and the dataset assets; outputs under ``workdir``.

    The instance's deployment file records the demo's resource set, so `cah dev` on the same
    instance re-runs anything from the UI: same crawl, data root, image web addresses and tiny CLIP.
    """
    workdir = os.path.abspath(workdir)
    started = time.perf_counter()
    quiet_console()
    home = os.path.join(workdir, "dagster_home")
    instance = prepare_dagster_home(home)
    crawl_dir, data_dir = os.path.join(workdir, "crawl"), os.path.join(workdir, "data")
    for stale in (crawl_dir, data_dir):  # a new image web gets new ports: old outputs would not match
        shutil.rmtree(stale, ignore_errors=True)
    os.makedirs(data_dir)
    with LocalImageWeb(n_hosts=WEB_HOSTS, seed=seed) as web, file_server(data_dir) as files_url:
        deployment = Deployment("demo", crawl_dir, data_dir, seed, list(web.hosts), files_url)
        write_deployment(home, deployment)
        warc = f" and {warc_files} WARC files of {DEMO_WARC_CRAWL}" if warc_files else ""
        say(
            f"1/4 generating {wat_files} WAT files of {crawl}{warc}; images served by a local web on "
            f"{web.origins[0]} and {WEB_HOSTS - 1} more hosts"
        )
        sample = generate_demo_crawl(crawl_dir, web, crawl, wat_files, pages_per_file, seed)
        warc_sample = generate_demo_warc_crawl(crawl_dir, web, warc_files, pages_per_file, seed) if warc_files else None
        defs = build_definitions(deployment)
        resources = defs.resources or {}
        common_crawl, storage = resources["common_crawl"], resources["storage"]
        registration, _ = register_and_add(instance, common_crawl, storage, crawl, files_per_segment=2)
        keys = registration.keys()
        registered = f"2/4 registered {crawl}: {_segments(registration, 'WAT')}"
        warc_keys: list[str] = []
        if warc_sample is not None:
            warc_registration, _ = register_and_add(
                instance, common_crawl, storage, DEMO_WARC_CRAWL, files_per_segment=2, format=FORMAT_WARC
            )
            warc_keys = warc_registration.keys()
            registered += f"; {DEMO_WARC_CRAWL}: {_segments(warc_registration, 'WARC')}"
        say(registered)
        with stage_progress(len(keys) + len(warc_keys), "3/4 segments", enabled=show_progress) as advance:
            for key in keys + warc_keys:
                result = run_job(instance, defs, PIPELINE_JOB, key, QUIET_RUN_CONFIG)
                # A WAT crawl's pages are empty: its line is shown for WARC segments only.
                shown = (STAGES[0], PAGES, *STAGES[1:]) if key in warc_keys else STAGES
                for line in run_summary(result, shown):
                    say(f"3/4 {key} {line}")
                raise_unless_succeeded(result, f"segment {key}")
                advance()
        score_pages(instance, defs, warc_keys + register_demo_dataset(instance, defs, workdir), say)
        result = run_job(instance, defs, DATASET_JOB, run_config=QUIET_RUN_CONFIG)
        raise_unless_succeeded(result, "release/report")
        say(f"4/4 {run_summary(result, ('release',))[0]}")
    root = storage.data_root()
    seconds = time.perf_counter() - started
    return DemoResult(sample, root, keys, instance, seconds, deployment, warc_sample, warc_keys)


def register_demo_dataset(instance: dg.DagsterInstance, defs: dg.Definitions, workdir: str) -> list[str]:
    """A small Parquet dataset (generated pages in four languages) registered as a crawl; its segment keys."""
    folder = os.path.join(workdir, "datasets", DEMO_DATASET)
    shutil.rmtree(folder, ignore_errors=True)
    write_page_dataset(folder, files=2, pages_per_file=150, seed=1)
    resources = defs.resources or {}
    registration, _ = register_and_add(
        instance,
        resources["common_crawl"],
        resources["storage"],
        DEMO_DATASET,
        files_per_segment=1,
        format=FORMAT_PARQUET,
        files=[f"{folder}/*.parquet"],
    )
    return registration.keys()


def score_pages(
    instance: dg.DagsterInstance, defs: dg.Definitions, keys: list[str], say: Callable[[str], None] = print
) -> None:
    """page_scores of each segment (a WARC crawl's pages, a dataset's files) by the tiny classifier: one line each."""
    for key in keys:
        result = run_job(instance, defs, stage_job_name(PAGE_SCORES), key, QUIET_RUN_CONFIG)
        raise_unless_succeeded(result, f"page_scores of {key}")
        for line in run_summary(result, (PAGE_SCORES,)):
            say(f"3/4 {key} {line}")


def run_demo(workdir: str, crawl: str = DEMO_CRAWL, wat_files: int = 4, seed: int = 0, warc_files: int = 2) -> int:
    outcome = run_pipeline(
        workdir, crawl=crawl, wat_files=wat_files, seed=seed, show_progress=True, warc_files=warc_files
    )
    print(*closing_lines(outcome), sep="\n")
    return 0


def closing_lines(outcome: DemoResult) -> list[str]:
    """What `cah demo` prints last: each crawl's release (the dataset's scored pages) and report, and the UI."""
    root = outcome.root
    made = {outcome.crawl.crawl: root.path(RELEASE, outcome.crawl.crawl)}
    if outcome.warc_keys:
        made[DEMO_WARC_CRAWL] = root.path(RELEASE, DEMO_WARC_CRAWL)
    made[DEMO_DATASET] = root.path(PAGE_SCORES, f"{DEMO_DATASET}_*")  # text only: no pairs to release
    width = max(map(len, made))
    return [
        f"done in {outcome.seconds:.0f}s. Releases (pages scored, for {DEMO_DATASET}) and reports:",
        *(f"  {c:<{width}}  {path}  {root.path('report', c, 'report.md')}" for c, path in made.items()),
        "Browse lineage, partitions, runs, checks and the reports, and re-run any of it, with:",
        "  make dev    # then open http://127.0.0.1:3000",
    ]
