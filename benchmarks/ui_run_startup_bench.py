"""What a UI-launched segment run spends before its first step, and in all: steps in process vs one process per step.

    .venv/bin/python benchmarks/ui_run_startup_bench.py              # 2 rounds, about 6 minutes on 2 cores
    .venv/bin/python benchmarks/ui_run_startup_bench.py --rounds 3

`cah demo` makes a small instance (one segment); `cah dev` opens it (webserver, daemon, code server,
the demo's image web), and the `pipeline` job of the segment is launched through the webserver's
GraphQL API as the UI's Launchpad does, alternately with:

- reference: Dagster's multiprocess executor (each step in a process of its own: the default of a
  Dagster job, and what this project's jobs used before);
- in_process: the project's default (cah_assets/definitions.py COORDINATOR_EXECUTOR).

Figures per run, from the run's own events: seconds from the launch (the run's creation) to its first
STEP_START, and to RUN_SUCCESS; best and median over the rounds. The segment's finished image shards
and clip scores are skipped by both (only candidates is recomputed): the figure is the orchestration's.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import dagster as dg

from cah_assets.definitions import PIPELINE_JOB
from cah_assets.demo import run_pipeline
from cah_assets.dev import graphql
from cah_resources.samples.cluster_peers import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, ".work", "ui_run_startup")
EXECUTORS = ("multiprocess", "in_process")
LAUNCH = """mutation($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
__typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""


def wait_until_loaded(url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
    while time.monotonic() < deadline:
        try:
            entries = graphql(url, query)["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise TimeoutError(f"the UI at {url} did not load in {timeout_s} s")


def launch(url: str, key: str, executor: str) -> str:
    params = {
        "mode": "default",
        "runConfigData": json.dumps({"execution": {"config": {executor: {}}}}),
        "selector": {"repositoryLocationName": "cah", "repositoryName": "__repository__", "jobName": PIPELINE_JOB},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
    }
    launched = graphql(url, LAUNCH, {"params": params})["launchPipelineExecution"]
    if launched["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"launch failed: {launched}")
    return launched["run"]["runId"]


def timings(instance: dg.DagsterInstance, run_id: str, timeout_s: float = 600) -> tuple[float, float]:
    """Seconds from the run's creation to its first STEP_START and to its end (it must succeed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = instance.get_run_record_by_id(run_id)
        if run is not None and run.dagster_run.is_finished:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not finish in {timeout_s} s")
        time.sleep(1)
    if run.dagster_run.status != dg.DagsterRunStatus.SUCCESS:
        raise RuntimeError(f"run {run_id} ended {run.dagster_run.status}")
    created = run.create_timestamp.timestamp()
    events = [e for e in instance.all_logs(run_id) if e.is_dagster_event]
    first_step = min(e.timestamp for e in events if e.dagster_event.event_type_value == "STEP_START")
    end = max(e.timestamp for e in events if e.dagster_event.event_type_value == "PIPELINE_SUCCESS")
    return first_step - created, end - created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    previous = os.environ.get("DAGSTER_HOME")
    outcome = run_pipeline(WORK, wat_files=2, pages_per_file=12, seed=3, say=lambda _: None)
    os.environ.pop("DAGSTER_HOME", None) if previous is None else os.environ.__setitem__("DAGSTER_HOME", previous)
    home, key = outcome.instance.root_directory, outcome.segment_keys[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CAH_")}, "DAGSTER_HOME": home}
    cah = os.path.join(os.path.dirname(sys.executable), "cah")
    with open(os.path.join(home, "cah_dev.log"), "wb") as log:
        dev = subprocess.Popen(
            [cah, "dev", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    figures: dict[str, list[tuple[float, float]]] = {executor: [] for executor in EXECUTORS}
    try:
        wait_until_loaded(url)
        with dg.DagsterInstance.from_config(home) as instance:
            for round_ in range(args.rounds):
                for executor in EXECUTORS:
                    first, total = timings(instance, launch(url, key, executor))
                    figures[executor].append((first, total))
                    print(f"round {round_ + 1} {executor:<12} first step {first:5.1f} s, run {total:5.1f} s")
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        dev.wait(timeout=60)
    print(f"\n{'executor':<14}{'to first step (best/median)':>30}{'whole run (best/median)':>28}")
    for executor, runs in figures.items():
        firsts, totals = [f for f, _ in runs], [t for _, t in runs]
        print(
            f"{executor:<14}{min(firsts):>17.1f} / {statistics.median(firsts):5.1f} s"
            f"{min(totals):>17.1f} / {statistics.median(totals):5.1f} s"
        )
    reference = statistics.median(t for _, t in figures["multiprocess"])
    in_process = statistics.median(t for _, t in figures["in_process"])
    print(f"in_process whole run: {in_process / reference:.2f} of the reference's (medians)")


if __name__ == "__main__":
    main()
