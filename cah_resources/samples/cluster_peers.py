"""A cluster's shared services on one machine, as real processes: S3 peer, Postgres database, TLS scheduler, workers.

The cluster rehearsal (cah_assets/rehearsal.py) and the tests start these; each is a context manager
that ends what it started. Workers are `cah worker` processes (the command fleet servers run), each
in a folder of its own, and a ``FolderWatch`` records any moment one of them holds a path it must
never see: machines of a real fleet share no disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from cah_resources.errors import one_line

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# The worker's certificate files, named as cloud-init writes them to /etc/cah/tls on a fleet server.
WORKER_TLS_FILES = ("ca.pem", "worker.pem", "worker-key.pem")
# What a worker inherits from the coordinator's environment: how to find Python and cah, nothing else.
WORKER_ENV_KEEP = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "VIRTUAL_ENV")
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(process: subprocess.Popen) -> None:
    """End a process started here and its children (it leads its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)


def _wait_until(ready, process: subprocess.Popen, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was ready")
        if ready():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} was not ready within {timeout_s:.0f} s")


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def _listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def moto_server(port: int = 0) -> Iterator[str]:
    """moto's S3 server (the peer s3fs's own tests use) in its own process on a loopback port; yields its endpoint."""
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_until(
            lambda: _answers(endpoint + "/moto-api/"),
            process,
            f"moto server on {endpoint} (moto[server] is in the dev group: `make setup`)",
        )
        yield endpoint
    finally:
        stop_process_group(process)


@contextmanager
def postgres_database(prefix: str = "cah_rehearsal") -> Iterator[str]:
    """A fresh database on the local PostgreSQL server (trust auth), dropped afterwards; yields its name."""
    import psycopg2

    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **POSTGRES)
    except psycopg2.OperationalError as error:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {POSTGRES['host']}:{POSTGRES['port']} as "
            f"{POSTGRES['user']} ({str(error).strip().splitlines()[0]})"
        ) from None
    admin.autocommit = True
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def make_tls(out: Path, key_bits: int = 2048) -> Path:
    """The cluster's CA and certificates, made by the script users run (deploy/make_tls.sh)."""
    subprocess.run(
        ["bash", str(REPO / "deploy" / "make_tls.sh"), str(out)],
        check=True,
        capture_output=True,
        env={**os.environ, "KEY_BITS": str(key_bits)},
        timeout=120,
    )
    return out


def tls_flags(tls: Path, role: str) -> list[str]:
    """The `dask` / `cah worker` flags for mutual TLS with ``role``'s certificate (deploy/make_tls.sh's names)."""
    return [
        "--tls-ca-file",
        str(tls / "ca.pem"),
        "--tls-cert",
        str(tls / f"{role}.pem"),
        "--tls-key",
        str(tls / f"{role}-key.pem"),
    ]


@contextmanager
def tls_scheduler(tls: Path, log: Path) -> Iterator[str]:
    """`dask scheduler` with mutual TLS on loopback, as deploy/systemd/dask-scheduler.service runs it.

    Yields its address."""
    port = free_port()
    args = [
        str(BIN / "dask"),
        "scheduler",
        "--protocol",
        "tls",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *tls_flags(tls, "scheduler"),
        "--no-dashboard",
    ]
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, cwd=log.parent, start_new_session=True
        )
    try:
        _wait_until(lambda: _listens(port), process, f"dask scheduler on port {port}")
        yield f"tls://127.0.0.1:{port}"
    finally:
        stop_process_group(process)


@dataclass
class WorkerMachine:
    """One `cah worker` process standing in for a fleet server: its folder is its whole disk."""

    name: str
    folder: Path
    process: subprocess.Popen

    def pids(self) -> list[int]:
        """The `cah worker` process and every process under it (its nannies and their workers)."""
        try:
            top = psutil.Process(self.process.pid)
            return [top.pid, *(p.pid for p in top.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []


@contextmanager
def worker_machine(address: str, name: str, folder: Path, tls: Path, nworkers: int = 1) -> Iterator[WorkerMachine]:
    """`cah worker` as cloud-init starts it, in ``folder`` (its cwd, HOME and TMPDIR) with its certificates copied in.

    It inherits nothing from the coordinator's environment but how to run Python: no data root, no
    keys, no instance. What it needs comes with the work, through the TLS scheduler.
    """
    home, tmp, certs = folder / "home", folder / "tmp", folder / "etc-cah-tls"
    for made in (home, tmp, certs):
        made.mkdir(parents=True, exist_ok=True)
    for name_ in WORKER_TLS_FILES:
        shutil.copy(tls / name_, certs / name_)
    argv = [
        "--scheduler",
        address,
        "--name",
        name,
        "--nthreads",
        "1",
        "--nworkers",
        str(nworkers),
        *tls_flags(certs, "worker"),
    ]
    env = {k: os.environ[k] for k in WORKER_ENV_KEEP if k in os.environ}
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    with open(folder / "worker.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cah_assets.cli", "worker", *argv],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield WorkerMachine(name, folder, process)
    finally:
        stop_process_group(process)


@dataclass
class FolderWatch:
    """Samples the workers' processes: any cwd, open file, argument or environment value under a forbidden folder."""

    machines: list[WorkerMachine]
    forbidden: list[Path]
    interval_s: float = 0.2
    seen: list[str] = field(default_factory=list)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _forbidden(self, text: str) -> bool:
        return any(str(f) in text for f in self.forbidden)

    def sample(self) -> None:
        for machine in self.machines:
            for pid in machine.pids():
                try:
                    process = psutil.Process(pid)
                    held = [
                        ("cwd", process.cwd()),
                        *(("open", f.path) for f in process.open_files()),
                        *(("arg", a) for a in process.cmdline()),
                        *(("env", f"{k}={v}") for k, v in process.environ().items()),
                    ]
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    continue
                for kind, value in held:
                    if self._forbidden(value):
                        self.seen.append(f"{machine.name} pid {pid} {kind} {value}")
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> FolderWatch:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="cah-folder-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def executing_keys(dask_worker) -> tuple[int, list[str]]:
    """Run on a worker by ``Client.run``: its pid and the keys of the tasks it is executing now."""
    return os.getpid(), [str(task.key) for task in dask_worker.state.executing]


@dataclass(frozen=True)
class Killed:
    worker: str
    pid: int
    task: str


def kill_worker_mid_task(
    client, key_prefix: str, after_s: float = 0.3, timeout_s: float = 300.0, stop: threading.Event | None = None
) -> Killed:
    """SIGKILL the worker process that has been executing a task named ``key_prefix-...`` for ``after_s``.

    The task is asked for again just before the kill, so the worker dies with it unfinished. ``stop``
    set: give up (the tasks are all done).
    """

    def executing(**where) -> dict:
        try:
            return client.run(executing_keys, on_error="ignore", **where)
        except OSError:  # a worker went away between listing and asking
            return {}

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        for address, (pid, keys) in executing().items():
            task = next((k for k in keys if k.startswith(key_prefix + "-")), None)
            if task is None:
                continue
            time.sleep(after_s)
            if task in executing(workers=[address]).get(address, (0, []))[1]:
                os.kill(pid, signal.SIGKILL)
                return Killed(address, pid, task)
        time.sleep(0.1)
    within = "before the tasks were done" if stop is not None and stop.is_set() else f"within {timeout_s:.0f} s"
    raise TimeoutError(f"no worker ran a {key_prefix} task for {after_s} s {within}")


def unauthenticated_refusals(address: str, tls: Path, stranger: Path, timeout_s: float = 10.0) -> dict[str, str]:
    """How the scheduler answers clients without a certificate of its CA: each attempt's error, or 'accepted'.

    ``tls`` holds the cluster's CA; ``stranger`` another CA's client certificate (make_tls elsewhere).
    """
    from cah_resources.fleet.compute import ClusterUnavailable, cluster_security, connect_client

    outcomes = {}
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    # TLS that trusts the cluster's CA but shows no certificate of its own: the scheduler must end the handshake.
    context = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as connection,
        ):
            connection.sendall(b"\0" * 8)
            outcomes["TLS without a client certificate"] = (
                "accepted" if connection.recv(1) else "closed by the scheduler"
            )
    except (ssl.SSLError, OSError) as error:
        outcomes["TLS without a client certificate"] = one_line(error)
    attempts = {
        "dask client with another CA's certificate": (
            address,
            cluster_security(str(stranger / "ca.pem"), str(stranger / "client.pem"), str(stranger / "client-key.pem")),
        ),
        "dask client over plain TCP": (address.replace("tls://", "tcp://"), cluster_security("", "", "")),
    }
    for what, (target, security) in attempts.items():
        try:
            with connect_client(target, security, timeout_s):
                outcomes[what] = "accepted"
        except ClusterUnavailable as error:
            outcomes[what] = one_line(error)
    return outcomes
