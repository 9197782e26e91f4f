"""deploy/: the Postgres instance config against the real server, and the service files against the real CLIs."""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
from conftest import skip_or_fail

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
BIN = Path(sys.executable).parent


@dg.asset
def handshake() -> int:
    """A one-op asset: enough to write a run and its events through the instance's storage."""
    return 1


@pytest.fixture
def postgres_database():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as error:
        skip_or_fail(f"PostgreSQL on 127.0.0.1:5432 is not reachable ({error})")
    admin.autocommit = True
    name = f"cah_deploy_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


@pytest.mark.postgres
def test_deploy_instance_keeps_runs_and_events_in_postgres(postgres_database, tmp_path, monkeypatch):
    for key, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_DB": postgres_database,
        "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "",
    }.items():
        monkeypatch.setenv(key, value)
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        result = dg.materialize([handshake], instance=instance)
        assert result.success

    import psycopg2

    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=postgres_database) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT status FROM runs")
        assert cursor.fetchall() == [("SUCCESS",)]


def exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


@functools.cache
def help_text(program: str, subcommand: str) -> str:
    """``program [subcommand] --help``: the options the installed program really has."""
    with_subcommand = program in ("cah", "dask", "dagster-daemon")
    command = [str(BIN / program), *([subcommand] if with_subcommand else []), "--help"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("unit", sorted(p.name for p in (DEPLOY / "systemd").glob("*.service")))
def test_service_files_use_only_options_their_programs_know(unit):
    argv = exec_start(DEPLOY / "systemd" / unit)
    assert argv[0].startswith("/opt/cah/venv/bin/")
    known = help_text(Path(argv[0]).name, argv[1])
    for option in (a for a in argv if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", known), (
            f"{unit}: {option} is not an option of {argv[:2]}"
        )


def test_the_scheduler_service_requires_tls():
    argv = exec_start(DEPLOY / "systemd" / "dask-scheduler.service")
    assert argv[argv.index("--protocol") + 1] == "tls"
    assert {"--tls-ca-file", "--tls-cert", "--tls-key"} <= set(argv)
    assert argv[argv.index("--dashboard-address") + 1].startswith("127.0.0.1:")
