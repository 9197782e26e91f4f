"""The `cah` command: help on everything, and one line for every error a user can cause."""

import http.server
import threading

import click
import pytest

from cah_assets import cli
from cah_resources.samples.sample_crawl import generate_crawl


def _commands(group: click.Group):
    for name, command in group.commands.items():
        yield name, command
        if isinstance(command, click.Group):
            yield from _commands(command)


def test_every_command_and_option_has_help_text():
    assert cli.cah.help
    for name, command in _commands(cli.cah):
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts}"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def instance_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def test_without_dagster_home_a_command_says_how_to_set_it_in_one_line(capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    code, _, err = _run(capsys, "register", "CC-MAIN-2024-10")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("cah register: DAGSTER_HOME is not set") and "make demo" in err


def test_an_unknown_crawl_is_one_line_listing_the_crawls_the_source_has(capsys, instance_home, tmp_path):
    crawls = tmp_path / "crawl"
    generate_crawl(str(crawls), crawl="CC-MAIN-2024-10", wat_files=1, pages_per_file=2)
    generate_crawl(str(crawls), crawl="CC-MAIN-2024-18", wat_files=1, pages_per_file=2)
    data = str(tmp_path / "d")
    code, _, err = _run(capsys, "register", "CC-MAIN-2024-1O", "--source", str(crawls), "--data-root", data)
    assert code == 2 and err.count("\n") == 1
    assert err.strip().endswith("known crawls: CC-MAIN-2024-10, CC-MAIN-2024-18")


def test_an_unreachable_source_is_retried_visibly_then_one_line(capsys, instance_home, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "REGISTER_BACKOFF_S", 0.01)

    # A listening socket that answers every request by closing the connection: unreachable as a crawl source.
    class Hangup(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.close_connection = True
            self.connection.close()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hangup)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = f"http://127.0.0.1:{server.server_address[1]}"
        data = str(tmp_path / "d")
        code, _, err = _run(capsys, "register", "CC-MAIN-2024-10", "--source", source, "--data-root", data)
    finally:
        server.shutdown()
        server.server_close()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == cli.REGISTER_ATTEMPTS
    assert all("did not answer" in line for line in lines[:-1])
    assert lines[-1].startswith(f"cah register: {source} is unreachable after {cli.REGISTER_ATTEMPTS} attempts")


def test_materialize_of_an_unregistered_segment_names_the_registered_crawls(capsys, instance_home):
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("segments", ["CC-MAIN-2024-10_00000", "CC-MAIN-2024-10_00001"])
    code, _, err = _run(capsys, "materialize", "CC-MAIN-2024-18_00000")
    assert code == 2 and err.count("\n") == 1
    assert "registered crawls: CC-MAIN-2024-10" in err


def test_segments_are_keys_ranges_or_whole_crawls():
    known = [f"CC-A_{i:05d}" for i in range(4)] + ["CC-B_00000"]
    assert cli.expand_segments(("CC-A_00001..CC-A_00003",), known) == known[1:4]
    assert cli.expand_segments(("CC-B", "CC-A_00000"), known) == ["CC-B_00000", "CC-A_00000"]
    assert cli.expand_segments(("CC-A_00002..CC-A_00001", "CC-A_00001"), known) == ["CC-A_00001", "CC-A_00002"]


def test_a_key_past_its_crawls_range_names_the_range_as_a_launch_does():
    known = [f"CC-A_{i:05d}" for i in range(4)] + ["CC-B_00000"]
    for asked in (("CC-A_00007",), ("CC-A_00001..CC-A_00009",)):
        with pytest.raises(cli.UserError) as error:
            cli.expand_segments(asked, known)
        assert str(error.value) == f"{asked[0][-10:]} is not a segment of CC-A: its segments are CC-A_00000..CC-A_00003"
    with pytest.raises(cli.UserError, match=r"^CC-C_00000 is not a registered segment or crawl \(registered crawls"):
        cli.expand_segments(("CC-C_00000",), known)


def test_loading_the_code_location_shows_no_beta_or_preview_warning():
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo}
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", "from cah_assets.definitions import defs"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "BetaWarning" not in done.stderr and "PreviewWarning" not in done.stderr, done.stderr


class _NotFound(http.server.BaseHTTPRequestHandler):
    """A crawl source that has no crawl: every file answers 404."""

    def do_GET(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def empty_source():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("form", ["userinfo", "query", "unreachable", "environment"])
def test_a_crawl_source_credential_is_never_printed(capsys, instance_home, tmp_path, monkeypatch, empty_source, form):
    monkeypatch.setattr(cli, "REGISTER_BACKOFF_S", 0.01)
    secret = "s3cretPW-9f2"
    address = f"127.0.0.1:{_closed_port()}" if form == "unreachable" else empty_source
    source = f"http://{empty_source}/cc?token={secret}" if form == "query" else f"http://cah:{secret}@{address}"
    argv = ["register", "CC-MAIN-2024-10", "--data-root", str(tmp_path / "d")]
    if form == "environment":
        monkeypatch.setenv("CAH_CRAWL_SOURCE", source)
    else:
        argv += ["--source", source]
    code, out, err = _run(capsys, *argv)
    assert code == 2 and "***" in err.splitlines()[-1]
    assert ("unreachable after" if form == "unreachable" else "is not a crawl of") in err
    assert secret not in out + err


def test_a_worker_given_no_scheduler_address_says_so_in_one_line(capsys):
    code, _, err = _run(capsys, "worker", "--scheduler", "not a url", "--nworkers", "1")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("cah worker: 'not a url' is no scheduler address like tls://")


def test_a_worker_that_cannot_reach_its_scheduler_exits_with_one_line_and_no_traceback(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2"}
    scheduler = f"tcp://127.0.0.1:{_closed_port()}"
    argv = [sys.executable, "-m", "cah_assets.cli", "worker", "--scheduler", scheduler, "--nworkers", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"cah worker: cannot join the scheduler at {scheduler}: ")
