"""`cah dev`'s terminal: warnings, errors and stage summaries, one line each; Dagster's chatter left in the UI."""

from cah_assets.dev import quiet_lines

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
