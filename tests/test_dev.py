"""`cah dev`'s terminal: warnings, errors and stage summaries, one line each; Dagster's chatter left in the UI."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil

from cah_assets.dev import quiet_lines
from cah_assets.policies import STOPPED
from cah_resources.samples.cluster_peers import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UI_START_S = 240  # the webserver answering on a slow 2-core machine: ~26 s seen
STOP_S = 60

RUN = "2026-12-06 18:05:36 +0000 - dagster - {level} - pipeline - 987c0a82-012b-42d7-b691-c6d56d3d3894 - {text}\n"


def test_run_events_and_sensor_ticks_are_dropped_and_summaries_kept():
    lines = [
        RUN.format(level="DEBUG", text='7796 - candidates - STEP_START - Started execution of step "candidates".'),
        RUN.format(level="INFO", text="candidates - file 1/2 crawl-data/x.warc.wat.gz: 23 records, 64 candidates"),
        RUN.format(level="INFO", text="candidates - summary: CC-MAIN-SAMPLE_00000 candidates   46 records"),
        "2026-12-06 18:04:46 +0000 - dagster - INFO - __repository__ - segment_flow_sensor - Prefetching\n",
    ]
    assert list(quiet_lines(lines)) == [lines[2].rstrip("\n")]


def test_an_error_is_shown_in_its_first_line_only():
    lines = [
        "\x1b[32m2026-12-06 18:03:28 +0000\x1b[0m - dagster - \x1b[31mERROR\x1b[0m - pipeline - r - candidates - "
        'STEP_FAILURE - Execution of step "candidates" failed.\n',
        "\n",
        "dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while executing op\n",
        "\n",
        "Stack Trace:\n",
        '  File "/x/execute_plan.py", line 246, in dagster_event_sequence_for_step\n',
    ]
    shown = list(quiet_lines(lines))
    assert shown[0] == (
        "2026-12-06 18:03:28 +0000 - dagster - ERROR - pipeline - r - candidates - STEP_FAILURE - Execution of step "
        '"candidates" failed.'
    )
    assert "Stack Trace:" not in shown and not any(line.startswith("  File") for line in shown)


def test_warnings_that_this_set_up_expects_are_not_shown_and_others_are():
    lines = [
        "2026-12-06 17:44:49 +0000 - dagster.daemon.EventLogConsumerDaemon - WARNING - No cursor for event type "
        "DagsterEventType.RUN_FAILURE, ignoring older events\n",
        "2026-12-06 17:44:49 +0000 - dagster - WARNING - Found a dagster instance configuration value (dagster.yaml) "
        "in the current folder, but your DAGSTER_HOME environment variable is set to /h. The dagster.yaml file will "
        "not be used to configure Dagster unless it is placed in the same folder as DAGSTER_HOME.\n",
        "/x/distributed/node.py:195: UserWarning: Port 8787 is already in use.\n",
        "Perhaps you already have a cluster running?\n",
        "  warnings.warn(\n",
    ]
    assert list(quiet_lines(lines)) == ["/x/distributed/node.py:195: UserWarning: Port 8787 is already in use."]


def test_the_webservers_own_error_lines_are_shown():
    bind = "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 3000): address already in use"
    lines = ["INFO:     Started server process [4242]\n", f"{bind}\n", "INFO:     Waiting for application startup.\n"]
    assert list(quiet_lines(lines)) == [bind]


def test_cah_dev_stopped_by_sigterm_stops_dagsters_webserver_daemon_and_code_server(tmp_path):
    """`kill`, `timeout` or a process manager stop `cah dev` alone: nothing of Dagster's may outlive it.

    Started as a script's `cah dev &` is, with SIGINT ignored, which dagster dev would inherit and then apply
    to SIGTERM too; the plain case takes the same path, less that step."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(os.path.join(REPO, "dagster.yaml"), home)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAH_")}
    env.update(DAGSTER_HOME=str(home), CAH_DATA_ROOT=str(tmp_path / "data"))
    cah = os.path.join(os.path.dirname(sys.executable), "cah")
    with open(tmp_path / "cah_dev.log", "wb") as log:
        process = subprocess.Popen(
            [cah, "dev", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `cah dev &` in a script
        )
        try:
            deadline = time.monotonic() + UI_START_S
            while "the UI is up" not in (tmp_path / "cah_dev.log").read_text() and process.poll() is None:
                assert time.monotonic() < deadline, (tmp_path / "cah_dev.log").read_text()
                time.sleep(0.5)
            dagster = psutil.Process(process.pid).children(recursive=True)
            commands = [" ".join(p.cmdline()) for p in dagster]
            assert any("dagster_webserver" in c for c in commands), commands
            process.send_signal(signal.SIGTERM)  # to `cah dev` only, not its process group
            process.wait(timeout=STOP_S)
            _, alive = psutil.wait_procs(dagster, timeout=STOP_S)
            assert not alive, [p.cmdline() for p in alive]
            with socket.create_server(("127.0.0.1", port)):  # the UI's port is free again
                pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def test_cah_dev_on_a_taken_port_says_so_in_one_line_at_once(tmp_path, capsys, monkeypatch):
    """The webserver would log the bind error among Dagster's lines, and the UI would never come up."""
    from cah_assets import cli

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code = cli.main(["dev", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"cah dev: port {port} on 127.0.0.1 is taken") and "--port" in err


STOPPED_RUN = "6cd806c7-4557-4a4c-b52f-15a3f961efb1"
RECORD = "2026-12-07 23:22:13 +0000 - dagster - {level} - clip_pairs_job - {run} - {text}\n"


def _terminated(run: str = STOPPED_RUN) -> list[str]:
    """What dagster dev prints when the UI's Terminate stops a run's clip_pairs step (as printed, trimmed)."""
    step_failed = '14652 - clip_pairs - STEP_FAILURE - Execution of step "clip_pairs" failed.'
    not_executed = "clip_pairs_checks - Dependencies for step clip_pairs_checks failed: ['clip_pairs']. Not executing."
    return [
        RECORD.format(level="DEBUG", run=run, text='14652 - clip_pairs - STEP_START - Started execution of step "c".'),
        RECORD.format(level="ERROR", run=run, text=step_failed),
        "\n",
        f"dagster._core.definitions.events.Failure: {STOPPED}\n",
        "\n",
        "Stack Trace:\n",
        '  File "/x/execute_plan.py", line 243, in dagster_event_sequence_for_step\n',
        "\n",
        RECORD.format(level="ERROR", run=run, text=not_executed),
        "2026-12-07 23:22:17,960 - distributed.nanny - WARNING - Worker process still alive after 4.0 seconds\n",
        RECORD.format(level="ERROR", run=run, text="14652 - RUN_CANCELED - Run was canceled. Failed steps: ['c']."),
    ]


def test_a_run_stopped_by_terminate_is_one_line_not_three_errors():
    shown = list(quiet_lines(_terminated()))
    assert shown == [
        f"2026-12-07 23:22:13 +0000 - dagster - INFO - clip_pairs_job - {STOPPED_RUN} - 14652 - clip_pairs - {STOPPED}"
    ]


def test_a_failed_step_beside_a_stopped_run_still_shows_its_error_and_knock_on_lines():
    failed = "0c1d2e3f-0000-4000-8000-000000000001"
    lines = [
        *_terminated(),
        RECORD.format(level="ERROR", run=failed, text='7 - clip_pairs - STEP_FAILURE - Execution of step "clip_pairs" '
                      "failed."),
        "\n",
        "dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while executing op\n",
        "\n",
        RECORD.format(level="ERROR", run=failed, text="clip_pairs_checks - Dependencies for step clip_pairs_checks "
                      "failed: ['clip_pairs']. Not executing."),
    ]  # fmt: skip
    shown = list(quiet_lines(lines))
    assert len(shown) == 4 and STOPPED in shown[0]
    assert shown[1].endswith('STEP_FAILURE - Execution of step "clip_pairs" failed.') and failed in shown[1]
    assert shown[2].startswith("dagster._core.errors.DagsterExecutionStepExecutionError")
    assert shown[3].endswith("Not executing.") and failed in shown[3]
    assert list(quiet_lines(lines[-5:-4])) == shown[1:2]  # a failure at the end of the output is not held back


def test_a_run_canceled_between_steps_is_information_not_an_error():
    run = "0c1d2e3f-0000-4000-8000-000000000002"
    canceled = RECORD.format(level="ERROR", run=run, text="14652 - RUN_CANCELED - Run was canceled.")
    assert list(quiet_lines([canceled])) == [canceled.rstrip("\n").replace(" - ERROR - ", " - INFO - ")]
