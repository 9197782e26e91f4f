"""The Dagster UI in headless Chromium: lineage of the stages, partition status, step attempts, backfills."""

import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import ClassVar

import dagster as dg
import pytest
import yaml
from conftest import skip_or_fail

from cah_assets.checks import candidates_checks
from cah_assets.definitions import defs
from cah_assets.dev import graphql as _graphql
from cah_assets.partitions import segments
from cah_assets.policies import SEGMENTS_PER_RUN, STOPPED
from cah_assets.progress import SUMMARY_MARK
from cah_assets.resources import CommonCrawl, ComputeResource, StorageResource
from cah_assets.stages.candidates import candidates
from cah_resources.candidates.checks import CANDIDATES_CHECKS
from cah_resources.contract import STAGES
from cah_resources.crawl.segments import register_crawl
from cah_resources.samples.cluster_peers import free_port
from cah_resources.samples.sample_crawl import generate_crawl

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(REPO, "test-artifacts", "ui")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
NOT_RETRIED = {"execution": {"config": {"in_process": {"retries": {"disabled": {}}}}}}
SERVER_START_S = 150
DAEMON_WAIT_S = 120
BIG_CRAWL = "CC-MAIN-2024-26"  # ten one-file segments, for a backfill larger than one run
PAGE_TIMEOUT_MS = 45_000


class FlakyCrawlMirror(http.server.SimpleHTTPRequestHandler):
    """Serves a crawl folder; answers 404 once for paths in ``fail_once`` and always for ``missing``."""

    fail_once: ClassVar[set[str]] = set()
    missing: ClassVar[set[str]] = set()

    def do_GET(self):
        path = self.path.lstrip("/")
        if path in self.missing or path in self.fail_once:
            self.fail_once.discard(path)
            self.send_error(404)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def ui_candidates_job() -> dg.JobDefinition:
    """The candidates job reading the crawl mirror named in the environment (Dagster rebuilds it per run)."""
    resources = {
        **defs.resources,
        "compute": ComputeResource(n_workers=1, processes=False, task_retries=0),  # a 404 fails the step at once
        "common_crawl": CommonCrawl(base_url=os.environ["CAH_TEST_MIRROR"], retries=0),
        "storage": StorageResource(root=os.environ["CAH_DATA_ROOT"]),
    }
    job = dg.define_asset_job("candidates_job", selection=dg.AssetSelection.assets(candidates), partitions_def=segments)
    return dg.Definitions(
        assets=[candidates], asset_checks=[candidates_checks], jobs=[job], resources=resources
    ).resolve_job_def("candidates_job")


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        skip_or_fail(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the playwright package is not installed (uv sync)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def _start(command: list[str], env: dict, log_path: str) -> tuple[subprocess.Popen, object]:
    log = open(log_path, "wb")  # noqa: SIM115 - the UI process writes it; closed when it is stopped
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), command[0]), *command[1:]],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, log


def _stop(process: subprocess.Popen, log) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    log.close()


def _wait_until_loaded(url: str, process: subprocess.Popen, log_name: str) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {process.returncode}; see {log_name}")
        try:
            data = _graphql(
                url,
                "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                "locationOrLoadError { __typename ... on PythonError { message } } } } } }",
            )
            entries = data["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [
                    e["locationOrLoadError"] for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"
                ]
                assert not errors, errors
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"dagster-webserver did not load the code location in {SERVER_START_S} s; see {log_name}")
        time.sleep(1)


def _instance_yaml() -> str:
    with open(os.path.join(REPO, "dagster.yaml")) as handle:
        config = yaml.safe_load(handle)
    # Runs the daemon creates stay queued: the tests look at how work is split into runs, not at running it again.
    config["concurrency"]["runs"]["max_concurrent_runs"] = 0
    return yaml.safe_dump(config)


@pytest.fixture(scope="module")
def ui(tmp_path_factory, sample_crawl):
    """dagster-webserver and dagster-daemon on loopback over an instance with real runs of the pipeline.

    The runs: a segment materialized, one retried then materialized, one failed. The servers load
    the project's code location while the runs execute; both are stopped at the end.
    """
    base = tmp_path_factory.mktemp("ui")
    home, data_root, mirror = base / "dagster_home", base / "data", base / "crawl"
    home.mkdir()
    (home / "dagster.yaml").write_text(_instance_yaml())
    shutil.copytree(sample_crawl.root, mirror)
    storage = StorageResource(root=str(data_root)).data_root()
    registration = register_crawl(CommonCrawl(base_url=str(mirror)).source(), storage, sample_crawl.crawl, 1)
    big = generate_crawl(str(mirror), crawl=BIG_CRAWL, wat_files=10, pages_per_file=2, seed=11)
    big_keys = register_crawl(CommonCrawl(base_url=str(mirror)).source(), storage, big.crawl, 1).keys()
    ok_key, retried_key, failed_key = registration.keys()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(segments.name, registration.keys() + big_keys)

    env = {**os.environ, "DAGSTER_HOME": str(home), "CAH_DATA_ROOT": str(data_root), "CAH_CRAWL_SOURCE": str(mirror)}
    url = f"http://127.0.0.1:{free_port()}"
    workspace = os.path.join(REPO, "workspace.yaml")
    FlakyCrawlMirror.fail_once = {registration.files_of(retried_key)[0]}
    FlakyCrawlMirror.missing = {registration.files_of(failed_key)[0]}
    saved = {k: os.environ.get(k) for k in ("CAH_TEST_MIRROR", "CAH_DATA_ROOT")}
    processes, mirror_server, runs = [], None, {}
    try:
        processes.append(
            _start(
                ["dagster-webserver", "-h", "127.0.0.1", "-p", url.rsplit(":", 1)[1], "-w", workspace],
                env,
                str(home / "webserver.log"),
            )
        )
        processes.append(_start(["dagster-daemon", "run", "-w", workspace], env, str(home / "daemon.log")))
        mirror_server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(FlakyCrawlMirror, directory=str(mirror))
        )
        threading.Thread(target=mirror_server.serve_forever, daemon=True).start()
        os.environ.update(
            CAH_TEST_MIRROR=f"http://127.0.0.1:{mirror_server.server_address[1]}", CAH_DATA_ROOT=str(data_root)
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            job = dg.reconstructable(ui_candidates_job)
            for key, config in ((ok_key, IN_PROCESS), (retried_key, IN_PROCESS), (failed_key, NOT_RETRIED)):
                result = dg.execute_job(
                    job, instance, run_config=config, tags={"dagster/partition": key}, raise_on_error=False
                )
                runs[key] = result.dagster_run
        assert [runs[k].status.value for k in (ok_key, retried_key, failed_key)] == ["SUCCESS", "SUCCESS", "FAILURE"]
        webserver, webserver_log = processes[0]
        _wait_until_loaded(url, webserver, webserver_log.name)
        _graphql(url, "mutation { setNuxSeen }")  # no "join the community" dialog over the pages under test
        yield {
            "url": url,
            "home": str(home),
            "runs": runs,
            "ok": ok_key,
            "retried": retried_key,
            "failed": failed_key,
            "big": big_keys,
        }
    finally:
        if mirror_server is not None:
            mirror_server.shutdown()
            mirror_server.server_close()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        for process, log in reversed(processes):
            _stop(process, log)


@pytest.fixture(scope="module")
def webserver(ui) -> str:
    return ui["url"]


@pytest.fixture
def page(browser, webserver, request):
    from playwright.sync_api import expect

    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    yield page
    _shot(page, f"end_of_{request.node.name}")  # what the page showed when the test ended, passed or not
    context.close()


def _shot(page, name: str) -> None:
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"), full_page=True)


def test_the_asset_graph_shows_the_three_stages_and_their_lineage(page, webserver):
    from playwright.sync_api import expect

    nodes = _graphql(webserver, "{ assetNodes { assetKey { path } dependencyKeys { path } } }")["assetNodes"]
    upstream = {n["assetKey"]["path"][-1]: [d["path"][-1] for d in n["dependencyKeys"]] for n in nodes}
    assert (upstream["candidates"], upstream["image_shards"], upstream["clip_pairs"]) == (
        [],
        ["candidates"],
        ["image_shards"],
    )

    page.goto(f"{webserver}/locations/__repository__@cah/asset-groups/pipeline")
    for stage in STAGES:
        expect(page.get_by_text(stage, exact=True).first).to_be_visible()
    expect(page.get_by_text("Loading...")).to_have_count(0)  # each node's partition and check status filled in
    _shot(page, "pipeline_group_lineage")
    page.goto(f"{webserver}/assets/image_shards?view=lineage")
    for stage in STAGES:  # the middle stage's lineage: candidates upstream, clip_pairs downstream
        expect(page.get_by_text(stage, exact=True).first).to_be_visible()
    _shot(page, "image_shards_lineage")


def test_a_segments_partition_status_shows_materialized_and_failed(page, webserver, ui):
    from playwright.sync_api import expect

    page.goto(f"{webserver}/assets/candidates?view=partitions")
    expect(page.get_by_text("Materialized (2)")).to_be_visible()
    expect(page.get_by_text("Failed (1)")).to_be_visible()
    page.get_by_text(ui["failed"], exact=True).first.click()
    expect(page.get_by_text(ui["runs"][ui["failed"]].run_id[:8]).first).to_be_visible()
    _shot(page, "candidates_partitions_failed_selected")
    page.get_by_text(ui["ok"], exact=True).first.click()
    expect(page.get_by_text("metadata_records").first).to_be_visible()  # the materialization's metadata
    _shot(page, "candidates_partitions_materialized_selected")


def test_a_retried_step_shows_its_attempts(page, webserver, ui):
    from playwright.sync_api import expect

    run_id = ui["runs"][ui["retried"]].run_id
    page.goto(f"{webserver}/runs/{run_id}")
    expect(page.get_by_text("Success").first).to_be_visible()
    retry = page.get_by_text("STEP_UP_FOR_RETRY").first
    expect(retry).to_be_visible()
    expect(page.get_by_text('Started re-execution (attempt # 2) of step "candidates".').first).to_be_visible()
    retry.scroll_into_view_if_needed()
    _shot(page, "retried_run")


def test_a_backfill_launched_through_graphql_is_listed_and_split_into_runs_of_eight_segments(page, webserver, ui):
    from playwright.sync_api import expect

    keys = ui["big"]
    data = _graphql(
        webserver,
        """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
        __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
        {
            "params": {
                # candidates and pages are one step (one pass over each file): a backfill selects both
                "assetSelection": [{"path": ["candidates"]}, {"path": ["pages"]}],
                "partitionNames": keys,
                "title": "cah UI test backfill",
            }
        },
    )
    launched = data["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    page.goto(f"{webserver}/overview/backfills")
    expect(page.get_by_text(backfill_id, exact=True)).to_be_visible()
    expect(page.get_by_text(f"{len(keys)} partitions").first).to_be_visible()
    _shot(page, "backfills")

    # The backfill daemon (an iteration every 30 s) turns the request into runs.
    deadline, ranges, run_ids = time.monotonic() + DAEMON_WAIT_S, [], []
    with dg.DagsterInstance.from_config(ui["home"]) as instance:
        while time.monotonic() < deadline and len(ranges) < 2:
            time.sleep(2)
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            run_ids = [r.run_id for r in runs]
            ranges = sorted(
                (r.tags.get("dagster/asset_partition_range_start"), r.tags.get("dagster/asset_partition_range_end"))
                for r in runs
            )
    assert ranges == [(keys[0], keys[SEGMENTS_PER_RUN - 1]), (keys[SEGMENTS_PER_RUN], keys[-1])]
    page.goto(f"{webserver}/runs/b/{backfill_id}?tab=runs")
    for run_id in run_ids:
        expect(page.get_by_text(run_id[:8], exact=True).first).to_be_visible()
    _shot(page, "backfill_runs")


# --- the demo's instance, as `make demo` then `make dev` show it -----------------------------------


@pytest.fixture(scope="module")
def demo_ui(tmp_path_factory):
    """`cah demo`'s instance opened by `cah dev` (webserver, daemon, its image web), only DAGSTER_HOME set."""
    from cah_assets.demo import run_pipeline

    workdir = tmp_path_factory.mktemp("demo_ui")
    previous = os.environ.get("DAGSTER_HOME")
    try:
        outcome = run_pipeline(str(workdir), wat_files=2, pages_per_file=12, seed=3, say=lambda _: None)
    finally:
        os.environ.pop("DAGSTER_HOME", None) if previous is None else os.environ.__setitem__("DAGSTER_HOME", previous)
    home = outcome.instance.root_directory
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAH_")}
    env["DAGSTER_HOME"] = home
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = os.path.join(home, "cah_dev.log")
    process, log = _start(["cah", "dev", "--port", str(port)], env, log_path)
    try:
        _wait_until_loaded(url, process, log.name)
        _graphql(url, "mutation { setNuxSeen }")
        yield {"url": url, "outcome": outcome, "home": home, "log": log_path}
    finally:
        _interrupt(process, log)


def _interrupt(process: subprocess.Popen, log) -> None:
    """Ctrl-C, as a person stops `cah dev`: dagster dev stops its webserver, daemon and code server."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    log.close()


@pytest.fixture
def demo_page(browser, demo_ui):
    from playwright.sync_api import expect

    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    yield page
    context.close()


def test_the_demo_instance_loads_the_demos_resources_and_names_its_jobs(demo_ui):
    data = _graphql(
        demo_ui["url"],
        """{ repositoriesOrError { ... on RepositoryConnection { nodes {
        jobs { name }
        allTopLevelResourceDetails { name configFields { name } configuredValues { key value } } } } } }""",
    )
    (repository,) = data["repositoriesOrError"]["nodes"]
    jobs = {job["name"] for job in repository["jobs"]}
    assert {"candidates_job", "image_shards_job", "clip_pairs_job", "pipeline", "dataset"} <= jobs
    storage = next(r for r in repository["allTopLevelResourceDetails"] if r["name"] == "storage")
    root = next(v["value"] for v in storage["configuredValues"] if v["key"] == "root")
    assert json.loads(root) == demo_ui["outcome"].deployment.data_root


def test_screenshots_of_the_demo_graph_partitions_run_checks_and_report(demo_page, demo_ui):
    from playwright.sync_api import expect

    page, url, outcome = demo_page, demo_ui["url"], demo_ui["outcome"]
    page.goto(f"{url}/locations/__repository__@cah/asset-groups/pipeline")
    for stage in STAGES:
        expect(page.get_by_text(stage, exact=True).first).to_be_visible()
    expect(page.get_by_text("Loading...")).to_have_count(0)
    _shot(page, "demo_asset_graph")

    page.goto(f"{url}/assets/image_shards?view=partitions")
    expect(page.get_by_text(f"Materialized ({len(outcome.segment_keys)})")).to_be_visible()
    _shot(page, "demo_partitions")

    run = next(r for r in outcome.instance.get_runs() if r.job_name == "pipeline")
    page.goto(f"{url}/runs/{run.run_id}")
    expect(page.get_by_text("Success").first).to_be_visible()
    expect(page.get_by_text("pipeline").first).to_be_visible()
    # The event log is loaded (the UI writes "Loading run logs…" with an ellipsis character until then).
    expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text("Re-execute all").first).to_be_enabled()  # a named job: the run can be redone
    _shot(page, "demo_run")

    page.goto(f"{url}/assets/candidates?view=checks")
    expect(page.get_by_text("drops_add_up").first).to_be_visible()
    expect(page.get_by_text("Passed").first).to_be_visible()
    _shot(page, "demo_checks")

    page.goto(f"{url}/assets/report")
    plot = page.locator("img[src$='funnel.thumbnail.png']").first
    expect(plot).to_be_visible()
    plot.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=plot.element_handle())
    _shot(page, "demo_report")
    # Every plot is a thumbnail that fits its cell of the metadata table, linking the full-size PNG.
    plots = page.locator("a[href$='.png'] > img[src$='.thumbnail.png']")
    expect(plots.first).to_be_visible()
    for index in range(plots.count()):
        image = plots.nth(index).element_handle()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image)
        fits = "img => img.getBoundingClientRect().right <= img.closest('td').getBoundingClientRect().right"
        assert page.evaluate(fits, image), plots.nth(index).get_attribute("src")


# --- what the README promises of `make dev` on the demo's instance ---------------------------------

RUN_WAIT_S = 300  # a UI-launched demo run: queued, launched, a code load, then the stages (about a minute here)


def _wait_for_run(home: str, run_id: str) -> dg.DagsterRun:
    deadline = time.monotonic() + RUN_WAIT_S
    with dg.DagsterInstance.from_config(home) as instance:
        while True:
            run = instance.get_run_by_id(run_id)
            if run is not None and run.is_finished:
                return run
            if time.monotonic() > deadline:
                pytest.fail(f"run {run_id} did not finish in {RUN_WAIT_S} s: {run and run.status}")
            time.sleep(2)


def _messages(home: str, run_id: str, event_type: str) -> list[str]:
    with dg.DagsterInstance.from_config(home) as instance:
        return [
            e.message or e.dagster_event.message or ""
            for e in instance.all_logs(run_id)
            if e.is_dagster_event and e.dagster_event.event_type_value == event_type
        ]


def _runs_since(home: str, known: set[str]) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(home) as instance:
        return [run for run in instance.get_runs() if run.run_id not in known]


def test_re_execute_all_on_a_demo_run_launches_a_run_that_succeeds(demo_page, demo_ui):
    from playwright.sync_api import expect

    page, url, home = demo_page, demo_ui["url"], demo_ui["home"]
    parent = next(r for r in demo_ui["outcome"].instance.get_runs() if r.job_name == "pipeline")
    page.goto(f"{url}/runs/{parent.run_id}")
    expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Re-execute all").first.click()
    page.wait_for_url(lambda address: "/runs/" in address and parent.run_id not in address)
    child_id = page.url.split("/runs/", 1)[1].split("?", 1)[0]
    child = _wait_for_run(home, child_id)
    assert (child.status, child.parent_run_id, child.tags["dagster/partition"]) == (
        dg.DagsterRunStatus.SUCCESS,
        parent.run_id,
        parent.tags["dagster/partition"],
    )
    expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible(timeout=60_000)
    _shot(page, "demo_reexecuted_run")


def test_the_demos_runs_are_on_the_overview_timeline(demo_page, demo_ui):
    from playwright.sync_api import expect

    page = demo_page
    page.goto(f"{demo_ui['url']}/overview/activity/timeline")
    for job in ("pipeline", "dataset"):  # rows of the code location's jobs, as the demo ran them
        expect(page.get_by_text(job, exact=True).first).to_be_visible()
    expect(page.get_by_text("No runs or scheduled ticks in this time period")).to_have_count(0)
    _shot(page, "demo_timeline")


def test_execute_all_checks_of_an_asset_checks_every_materialized_segment(demo_page, demo_ui):
    from playwright.sync_api import expect

    page, url, home = demo_page, demo_ui["url"], demo_ui["home"]
    known = {run.run_id for run in _runs_since(home, set())}
    page.goto(f"{url}/assets/candidates?view=checks")
    expect(page.get_by_text("drops_add_up").first).to_be_visible()
    # Dagster 1.13's UI disables a partitioned asset's per-check "Execute" ("Executing checks on their own
    # for partitioned assets is not yet supported"); "Execute all" launches the asset's checks alone.
    expect(page.locator("button", has_text="Execute").filter(has_not_text="all")).to_be_disabled()
    page.locator("button", has_text="Execute all").click()
    expect(page.get_by_text("Launched run").first).to_be_visible()
    (run,) = _runs_since(home, known)
    assert _wait_for_run(home, run.run_id).status == dg.DagsterRunStatus.SUCCESS
    assert _messages(home, run.run_id, "ASSET_MATERIALIZATION") == []  # checks only: nothing made again
    with dg.DagsterInstance.from_config(home) as instance:
        evaluations = [
            e.dagster_event.event_specific_data
            for e in instance.all_logs(run.run_id)
            if e.is_dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
    expected = {(name, key, True) for name in CANDIDATES_CHECKS for key in demo_ui["outcome"].segment_keys}
    assert {(e.check_name, e.partition, e.passed) for e in evaluations} == expected
    assert len(evaluations) == len(expected)
    _shot(page, "demo_checks_executed")


def test_materialize_with_redo_from_the_launchpad_recomputes_finished_shards(demo_page, demo_ui):
    from playwright.sync_api import expect

    page, url, home = demo_page, demo_ui["url"], demo_ui["home"]
    key = demo_ui["outcome"].segment_keys[0]
    known = {run.run_id for run in _runs_since(home, set())}
    page.goto(f"{url}/assets/image_shards")
    page.locator("button:right-of(:text('Materialize'))").first.click()  # the menu beside "Materialize…"
    page.get_by_text("Open launchpad").first.click()
    partition = page.get_by_placeholder("Partition")
    partition.fill(key)
    partition.press("Enter")
    redo = page.locator(".CodeMirror-line", has_text="redo:").first
    redo.get_by_text("false", exact=True).dblclick()  # the scaffolded `redo: false`
    page.keyboard.type("true")
    expect(page.locator(".CodeMirror-line", has_text="redo: true")).to_have_count(1)
    # The docs pane beside the editor describes the field the cursor is on.
    expect(page.get_by_text("Recompute the segment's finished shards or files instead of skipping")).to_be_visible()
    _shot(page, "demo_launchpad_redo")
    page.get_by_role("dialog").locator("button", has_text="Materialize").click()
    page.wait_for_url(lambda address: "/runs/" in address)  # the launchpad opens the run it launched
    run_id = page.url.split("/runs/", 1)[1].split("?", 1)[0]
    (run,) = [run for run in _runs_since(home, known) if run.run_id == run_id]
    assert run.run_config["ops"]["image_shards"]["config"]["redo"] is True
    assert (run.tags["dagster/partition"], _wait_for_run(home, run.run_id).status) == (key, dg.DagsterRunStatus.SUCCESS)
    planned = [m for m in _logs(home, run.run_id) if "already done" in m]
    assert planned and all(", 0 already done" in m for m in planned), planned  # every finished shard made again
    expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible(timeout=60_000)


def test_the_deployment_page_describes_each_setting_of_a_resource(demo_page, demo_ui):
    """README: a setting's docstring is its description in the UI (here the image downloader's)."""
    from playwright.sync_api import expect

    from cah_resources.flat_settings import flat_fields
    from cah_resources.image_shards.stage import ShardSettings

    page, url = demo_page, demo_ui["url"]
    page.goto(f"{url}/locations/__repository__@cah/resources/image_downloader")
    expect(page.get_by_text("concurrency", exact=True).first).to_be_visible()
    docs = {f.name: f.doc for f in flat_fields(ShardSettings)}
    for name in ("concurrency", "honour_robots_txt", "max_decode_cpu_seconds", "overlap_tails"):
        expect(page.get_by_text(docs[name], exact=False).first).to_be_visible()
    _shot(page, "image_downloader_settings")


def test_re_execute_from_failure_reruns_the_failed_step_of_a_cah_run(demo_page, demo_ui):
    """A `cah materialize` run whose step failed (its input was gone) is retried from the UI once it is back."""
    from playwright.sync_api import expect

    from cah_resources.contract import candidates_path

    page, url, home, outcome = demo_page, demo_ui["url"], demo_ui["home"], demo_ui["outcome"]
    key = outcome.segment_keys[-1]
    root = outcome.root
    path = candidates_path(root, key)
    known = {run.run_id for run in _runs_since(home, set())}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAH_")} | {"DAGSTER_HOME": home}
    moved = path + ".away"
    root.fs.mv(path, moved)
    try:
        done = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "cah"), "materialize", key, "--stage", "image_shards"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        root.fs.mv(moved, path)
    assert done.returncode != 0 and "failed" in done.stderr, done.stderr[-500:]
    # cah names the run that failed; on a slow machine another run of the segment may start meanwhile
    named = re.search(rf"{re.escape(key)} \(run ([0-9a-f]{{8}})\)", done.stderr)
    assert named, done.stderr[-500:]
    (parent,) = [run for run in _runs_since(home, known) if run.run_id.startswith(named.group(1))]
    assert (parent.status, parent.remote_job_origin is not None) == (dg.DagsterRunStatus.FAILURE, True)
    page.goto(f"{url}/runs/{parent.run_id}")
    expect(page.get_by_text("RUN_FAILURE").first).to_be_visible(timeout=60_000)
    from_failure = page.get_by_role("button", name="From failure")
    if not from_failure.is_visible():  # a menu beside "Re-execute all" holds it
        page.locator("button:right-of(:text('Re-execute all'))").first.click()
        from_failure = page.get_by_text("From failure").first
    from_failure.click()
    page.wait_for_url(lambda address: "/runs/" in address and parent.run_id not in address)
    child = _wait_for_run(home, page.url.split("/runs/", 1)[1].split("?", 1)[0])
    assert (child.status, child.parent_run_id, child.tags["dagster/partition"]) == (
        dg.DagsterRunStatus.SUCCESS,
        parent.run_id,
        key,
    )
    assert child.tags.get("dagster/is_resume_retry") == "true"  # from failure, not all steps again
    _shot(page, "demo_reexecuted_from_failure")


def _logs(home: str, run_id: str) -> list[str]:
    with dg.DagsterInstance.from_config(home) as instance:
        return [e.user_message for e in instance.all_logs(run_id) if not e.is_dagster_event]


def test_terminate_stops_a_redo_run_for_good_and_keeps_every_finished_shard(demo_page, demo_ui):
    """The run page's Terminate on a running redo of clip_pairs: canceled, not retried, no shard unmarked."""
    from playwright.sync_api import expect

    from cah_resources.clip_pairs.stage import pending_units

    page, url, home, outcome = demo_page, demo_ui["url"], demo_ui["home"], demo_ui["outcome"]
    key = outcome.segment_keys[0]
    assert pending_units(outcome.root, key) == []  # every shard scored by the demo
    launched = _graphql(
        url,
        """mutation($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
        {
            "params": {
                "mode": "default",
                "runConfigData": json.dumps({"ops": {"clip_pairs": {"config": {"redo": True}}}}),
                "selector": {
                    "repositoryLocationName": "cah",
                    "repositoryName": "__repository__",
                    "jobName": "clip_pairs_job",
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
            }
        },
    )["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    page.goto(f"{url}/runs/{run_id}")
    expect(page.get_by_text("STEP_START").first).to_be_visible(timeout=RUN_WAIT_S * 1000)
    page.get_by_role("button", name="Terminate").first.click()
    page.get_by_role("dialog").get_by_role("button", name="Terminate").click()  # "Terminate 1 run"
    expect(page.get_by_text("RUN_CANCELED").first).to_be_visible(timeout=RUN_WAIT_S * 1000)
    _shot(page, "demo_terminated_run")
    assert _wait_for_run(home, run_id).status == dg.DagsterRunStatus.CANCELED
    assert _messages(home, run_id, "STEP_UP_FOR_RETRY") == [] and _messages(home, run_id, "STEP_SUCCESS") == []
    assert any(STOPPED in m for m in _failure_descriptions(home, run_id)), _failure_descriptions(home, run_id)
    assert pending_units(outcome.root, key) == []  # the redo replaced some shards or none, and lost none


def _failure_descriptions(home: str, run_id: str) -> list[str]:
    with dg.DagsterInstance.from_config(home) as instance:
        return [
            e.dagster_event.step_failure_data.error.message
            for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        ]


def test_a_run_of_an_unknown_segment_fails_at_launch_in_one_line(demo_page, demo_ui):
    from playwright.sync_api import expect

    page, url, home = demo_page, demo_ui["url"], demo_ui["home"]
    keys = demo_ui["outcome"].segment_keys
    data = _graphql(
        url,
        """mutation($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
        __typename ... on LaunchRunSuccess { run { runId status } } ... on PythonError { message } } }""",
        {
            "params": {
                "mode": "default",
                "runConfigData": "{}",
                "selector": {
                    "repositoryLocationName": "cah",
                    "repositoryName": "__repository__",
                    "jobName": "candidates_job",
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "CC-MAIN-SAMPLE_00099"}]},
            }
        },
    )
    launched = data["launchPipelineExecution"]
    assert (launched["__typename"], launched["run"]["status"]) == ("LaunchRunSuccess", "FAILURE")  # already failed
    run_id = launched["run"]["runId"]
    expected = (
        "candidates_job: CC-MAIN-SAMPLE_00099 is not a segment of CC-MAIN-SAMPLE: "
        f"its segments are {keys[0]}..{keys[-1]}"
    )
    assert _messages(home, run_id, "PIPELINE_FAILURE") == [expected]
    assert _messages(home, run_id, "STEP_START") == []
    page.goto(f"{url}/runs/{run_id}")
    expect(page.get_by_text(expected).first).to_be_visible()
    _shot(page, "demo_unknown_segment")


def test_cah_dev_prints_a_banner_then_only_warnings_errors_and_stage_summaries(demo_ui):
    """Read last: the runs launched by the tests above printed to `cah dev`'s terminal."""
    url, home = demo_ui["url"], demo_ui["home"]
    os.makedirs(ARTIFACTS, exist_ok=True)
    shutil.copy(demo_ui["log"], os.path.join(ARTIFACTS, "cah_dev.log"))
    with open(demo_ui["log"]) as handle:
        lines = handle.read().splitlines()
    banner, up, *rest = lines
    assert banner.startswith(f"cah dev: UI {url} (loading), instance {home}, deployment demo; serving its image web")
    assert up == f"cah dev: the UI is up at {url}"
    startup_warnings = ("SupersessionWarning", "dagster.yaml", "No cursor for event type")
    assert not [line for line in lines if any(warning in line for warning in startup_warnings)]
    assert not [line for line in lines if "_sensor" in line]  # no sensor tick every 30 s
    summaries = [line for line in rest if SUMMARY_MARK in line]
    assert any("image_shards" in line and "URLs" in line for line in summaries), rest  # the UI's runs, in one line
    # The Terminate test's run: one line saying it was stopped, none of Dagster's errors about it.
    stops = [line for line in rest if STOPPED in line]
    assert stops and all(" - INFO - " in line for line in stops), stops
    stopped_runs = {
        match[0] for line in stops for match in [re.search(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", line)]
    }
    assert not [line for line in rest if line not in stops and any(run in line for run in stopped_runs)]
    canceled = [line for line in rest if " - RUN_CANCELED - " in line]  # between steps: information
    assert all(" - INFO - " in line for line in canceled), canceled
    others = [line for line in rest if SUMMARY_MARK not in line and line not in stops and line not in canceled]
    assert all(re.search(r"(WARNING|ERROR|CRITICAL) - |Warning|Error|Exception", line) for line in others), others
