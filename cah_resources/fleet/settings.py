"""The settings of the compute engine, `cah fleet` and `cah worker`: every default written once, light to import."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

HETZNER_API = "https://api.hetzner.cloud/v1"

LABEL_MANAGED, MANAGED_BY = "managed-by", "cah"
LABEL_FLEET, LABEL_ROLE = "cah-fleet", "cah-role"
CPU_RUNNER = "cpu-runner"
FLEET_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


class FleetError(RuntimeError):
    """A fleet operation cannot go on; the message says why and what to do, in one line."""


@dataclass(frozen=True)
class FleetSettings:
    """What the fleet is made of and the limits it keeps; plain data, safe to log."""

    name: str = "cah"
    """Fleet name: the label that marks its servers, and their names' prefix."""
    role: str = CPU_RUNNER
    """The role label its servers carry."""
    server_type: str = "cpx31"
    """Hetzner server type."""
    location: str = "fsn1"
    """Hetzner location."""
    image: str = "ubuntu-24.04"
    """Image the servers boot."""
    ssh_keys: tuple[str, ...] = ()
    """SSH key names in the Hetzner project, put on every server."""
    max_servers: int = 10
    """Refuse to run more servers than this."""
    max_price_per_hour: float = 2.0
    """Refuse to cost more per hour than this, in EUR with VAT (the API's gross prices)."""
    scheduler_address: str = ""
    """Address the workers join, tls://HOST:8786; empty: $CAH_SCHEDULER_ADDRESS."""
    tls_dir: str = ""
    """Folder made by deploy/make_tls.sh, whose certificates the workers and this client use."""
    package: str = ""
    """Pip requirement that installs this project on the servers."""
    extra_packages: tuple[str, ...] = ()
    """Extra pip requirements for the servers, e.g. s3fs for an s3:// data root."""
    nthreads: int = 1
    """Threads per worker process on a server."""
    join_timeout_s: float = 900.0
    """Seconds to wait for new servers' workers to join the scheduler."""
    join_poll_s: float = 10.0
    """Seconds between looks at the scheduler while waiting for workers to join."""
    endpoint: str = HETZNER_API
    """Hetzner Cloud API URL."""
    action_poll_s: float = 1.0
    """Seconds between looks at a Hetzner action (creating, deleting a server) until it finishes."""
    rate_limit_retries: int = 4
    """More tries of an API call the Hetzner API refused for its rate limit."""
    rate_limit_backoff_s: float = 5.0
    """Seconds before the first such try, doubled for each next one."""

    def __post_init__(self) -> None:
        if not FLEET_NAME.match(self.name):
            raise FleetError(f"fleet name {self.name!r} must be lowercase letters, digits and '-' (a hostname part)")

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_MANAGED: MANAGED_BY, LABEL_FLEET: self.name, LABEL_ROLE: self.role}

    @property
    def selector(self) -> str:
        return f"{LABEL_MANAGED}={MANAGED_BY},{LABEL_FLEET}={self.name}"

    def owns(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return labels.get(LABEL_MANAGED) == MANAGED_BY and labels.get(LABEL_FLEET) == self.name


DEFAULTS = FleetSettings()  # every default of the fleet, written once: the resource and the CLI take them from here
# Environment variables a deployment sets for the fleet; the CLI's options and HetznerFleet.from_env read them.
FLEET_ENV = {
    "name": "CAH_FLEET",
    "scheduler_address": "CAH_SCHEDULER_ADDRESS",
    "tls_dir": "CAH_TLS_DIR",
    "package": "CAH_FLEET_PACKAGE",
    "max_servers": "CAH_FLEET_MAX_SERVERS",
    "max_price_per_hour": "CAH_FLEET_MAX_EUR_PER_HOUR",
    "endpoint": "HCLOUD_ENDPOINT",
}


def env_default(field_name: str, environ: dict[str, str] | None = None):
    """The field's default, or the deployment's value from its environment variable (typed as the default)."""
    default = getattr(DEFAULTS, field_name)
    raw = (os.environ if environ is None else environ).get(FLEET_ENV[field_name])
    return default if raw is None else type(default)(raw)


# Worker processes per CUDA device, each with its own models, advertising GPU=1. One process's Python
# fed an H200 at 0.13 of the model's pace (benchmarks/README.md); 2 until benchmarks/clip_pairs_gpu.sh
# measures 1, 2 and 4 on a device.
PROCESSES_PER_GPU = 2


@dataclass(frozen=True)
class ComputeSettings:
    """Which Dask cluster the pipeline submits to, and how a local one is started; plain data, safe to log."""

    mode: str = ""
    """local (a Dask cluster started in the run's process) or remote (scheduler_address); empty:
    $CAH_COMPUTE_MODE, else local."""
    n_workers: int = 0
    """Local worker processes: 0 is one per core."""
    threads_per_worker: int = 1
    """Threads per local worker process."""
    processes: bool = True
    """Local workers as processes; off: threads of the run's process."""
    memory_limit: str = "auto"
    """Memory per local worker process (Dask's memory_limit: "auto" shares the machine's memory, or e.g. "4GiB")."""
    scheduler_address: str = ""
    """The remote scheduler, tls://HOST:8786; empty: $CAH_SCHEDULER_ADDRESS."""
    task_retries: int = 2
    """More tries Dask gives a work unit that raised or whose worker was lost."""
    local_gpus: int = -1
    """Local GPU workers: -1 one per visible CUDA device; n >= 0 that many (0 turns the GPU off)."""
    processes_per_gpu: int = PROCESSES_PER_GPU
    """Worker processes per local GPU, as `cah worker --gpu` starts them."""
    allow_cpu_fallback: bool = True
    """With no GPU worker, GPU work runs on CPU workers instead of failing the run."""
    tls_ca_file: str = ""
    """CA certificate for the remote scheduler; empty: $CAH_TLS_CA_FILE."""
    tls_cert_file: str = ""
    """Client certificate for the remote scheduler; empty: $CAH_TLS_CERT_FILE."""
    tls_key_file: str = ""
    """Client certificate's key; empty: $CAH_TLS_KEY_FILE."""
    connect_timeout_s: float = 30.0
    """Seconds to reach the remote scheduler before the run fails."""


GIB = 1024**3
# The seed refused GPUs with less free memory than this: two CLIP models and a batch fit in it.
MIN_FREE_GPU_BYTES = 4 * GIB


@dataclass(frozen=True)
class WorkerSettings:
    """What `cah worker` starts and where it joins; every default of the command, written once."""

    scheduler: str = ""
    gpu: bool = False
    nworkers: int = 0  # CPU worker processes: 0 is one per core, or none beside --gpu
    nthreads: int = 1
    name: str = ""  # worker name prefix; empty is this machine's hostname
    memory_limit: str = "auto"
    min_free_gb: float = MIN_FREE_GPU_BYTES / GIB  # per worker process on a device
    processes_per_gpu: int = PROCESSES_PER_GPU
    tls_ca_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""


WORKER_DEFAULTS = WorkerSettings()
