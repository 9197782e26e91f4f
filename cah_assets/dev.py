"""`cah dev`'s terminal: Dagster's UI and daemon started quietly, and their output kept to what a person acts on."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator

from cah_assets.launch import WORKSPACE
from cah_assets.policies import STOPPED
from cah_assets.progress import SUMMARY_MARK

# Lines that are expected on this set-up and say nothing a user could act on (each reason beside it).
EXPECTED_LINES = (
    # `make dev` copies the project's dagster.yaml into $DAGSTER_HOME: the one in the repository is its template.
    "will not be used to configure Dagster unless it is placed in the same folder as DAGSTER_HOME",
    # The daemon's first start on an instance (every `cah demo` makes a new one).
    "ignoring older events",
)
# `dagster dev` is superseded by `dg dev` (the dagster-dg-cli package, which needs a `dg` project layout);
# Dagster 1.13's dagster-webserver still ships `dagster dev`, and its warning would greet every start.
SUPERSEDED = "ignore:Function `dev_command` is superseded"
# Runs launched from the UI log every event at DEBUG to this terminal (their full log is in the UI): a record
# is shown when it is a warning or an error, or a stage's summary, and only its first line.
SHOWN_LEVELS = ("WARNING", "ERROR", "CRITICAL")
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} - \S+ - (?P<level>[A-Z]+) - ")
# A line outside any record that names a warning or an error (Python's own warnings, an uncaught exception,
# the webserver's uvicorn logging `ERROR:    [Errno 98] error while attempting to bind ...`).
PROBLEM = re.compile(r"^\S.*?(Warning|Error|Exception)\b|^(ERROR|CRITICAL):\s")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RUN_ID = re.compile(r" - (?P<run>[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}) - ")
STEP_FAILED = re.compile(r" - STEP_FAILURE - Execution of step \"[^\"]*\" failed\.$")
# Dagster's records of a run after one of its steps was stopped: its checks not run, the run canceled.
RUN_CANCELED = " - RUN_CANCELED - "
AFTER_A_STOP = ("Not executing.", RUN_CANCELED)
UP_POLL_S = 1.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # how a process manager, `timeout` or a closed terminal stop us
UP_WAIT_S = 600.0


def dagster_dev_command(port: int, workspace: str = WORKSPACE) -> list[str]:
    """`dagster dev` on 127.0.0.1:``port`` for the project's workspace, logging warnings and errors only."""
    return [
        *(sys.executable, "-W", SUPERSEDED, "-m", "dagster", "dev"),
        *("-w", workspace, "-h", "127.0.0.1", "-p", str(port)),
        *("--log-level", "warning", "--code-server-log-level", "warning"),
    ]


def quiet_lines(lines: Iterable[str]) -> Iterator[str]:
    """The lines a person acts on: warnings, errors and stage summaries, one line each, without colour codes.

    A step stopped on request (the UI's Terminate, Ctrl-C) is one line saying so, not Dagster's three errors
    (the step's failure, its checks not executed, the run canceled): a stop is what was asked for. A run
    canceled between steps is Dagster's line, as information rather than an error.
    """
    stopped: set[str] = set()  # runs whose step was stopped: their knock-on errors are not news
    held: str | None = None  # a step failure, until its error's first line says whether it was a stop
    for raw in lines:
        line = ANSI.sub("", raw.rstrip("\n"))
        if held is not None:
            if not line.strip():
                continue  # the blank line between a failure and its error
            failure, held = held, None
            if LOG_RECORD.match(line) is None and STOPPED in line:
                stopped.add(_run_id(failure))
                yield STEP_FAILED.sub(f" - {STOPPED}", failure.replace(" - ERROR - ", " - INFO - ", 1))
                continue
            yield failure
        if any(expected in line for expected in EXPECTED_LINES):
            continue
        record = LOG_RECORD.match(line)
        if record is not None:
            if STEP_FAILED.search(line):
                held = line
            elif (shown := _shown_record(line, record["level"], stopped)) is not None:
                yield shown
        elif PROBLEM.match(line):  # continuation lines (tracebacks, multi-line messages) start indented or plain
            yield line
    if held is not None:
        yield held


def _shown_record(line: str, level: str, stopped: set[str]) -> str | None:
    """A log record as the terminal shows it, or None: a warning, an error or a stage summary."""
    if _run_id(line) in stopped and any(mark in line for mark in AFTER_A_STOP):
        return None
    if RUN_CANCELED in line:  # Terminate between steps, or before the first: asked for, not an error
        return line.replace(" - ERROR - ", " - INFO - ", 1)
    return line if level in SHOWN_LEVELS or SUMMARY_MARK in line else None


def _run_id(line: str) -> str:
    found = RUN_ID.search(line)
    return found["run"] if found else ""


def run_quietly(command: list[str], echo: Callable[[str], None]) -> int:
    """Run ``command``, echoing its ``quiet_lines``; its exit status (0 on Ctrl-C).

    SIGTERM or SIGHUP sent to this process alone (``kill``, ``timeout``, a process manager) is passed on
    as SIGTERM, on which dagster dev stops its webserver, daemon and code server; left to Python's
    default, this process would die and leave them running, holding the UI's port.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # Started in the background by a script (`cah dev &`): dagster dev would inherit the ignored SIGINT, and
        # it handles SIGTERM as it handles SIGINT, so it would ignore the SIGTERM passed on to it as well.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    with process, stops_passed_on(process):
        try:
            assert process.stdout is not None
            for line in quiet_lines(process.stdout):
                echo(line)
            return process.wait()
        except KeyboardInterrupt:  # the terminal sent it to dagster dev too: let it shut its services down
            process.wait()
            return 0


@contextlib.contextmanager
def stops_passed_on(process: subprocess.Popen) -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP to this process become SIGTERM to ``process`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def pass_on(signum: int, frame: object) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    previous = {signum: signal.signal(signum, pass_on) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def port_taken(port: int) -> bool:
    """Whether the webserver could not listen on 127.0.0.1:``port`` now (it sets SO_REUSEADDR too)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    """The ``data`` of a query to the webserver at ``url`` (GraphQL errors raise RuntimeError)."""
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    if "errors" in body:
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


def wait_until_serving(url: str, then: Callable[[], None]) -> threading.Thread:
    """Call ``then`` once ``url`` answers (in a daemon thread, so the caller goes on)."""

    def poll() -> None:
        deadline = time.monotonic() + UP_WAIT_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=5):
                    then()
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(UP_POLL_S)

    thread = threading.Thread(target=poll, name="cah-dev-up", daemon=True)
    thread.start()
    return thread
