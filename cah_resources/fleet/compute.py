"""The compute engine: hands a run's work units to a Dask distributed cluster and gathers results."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distributed import Client, Nanny, Scheduler, SpecCluster, Worker, as_completed
from distributed.comm.core import CommClosedError
from distributed.security import Security
from distributed.worker_memory import parse_memory_limit

from cah_resources.errors import one_line
from cah_resources.fleet.lifetime import exit_with_parent
from cah_resources.fleet.unit_progress import PROGRESS_TOPIC

log = logging.getLogger(__name__)

GPU = "GPU"
# Where certificates come from when the resource's fields are empty; each may hold a path or PEM text.
TLS_ENV = {"ca": "CAH_TLS_CA_FILE", "cert": "CAH_TLS_CERT_FILE", "key": "CAH_TLS_KEY_FILE"}
# Where mode and address come from when the resource's fields are empty (deploy/cah.env sets them).
MODE_ENV, ADDRESS_ENV = "CAH_COMPUTE_MODE", "CAH_SCHEDULER_ADDRESS"


class ClusterUnavailable(RuntimeError):
    """The Dask scheduler could not be reached, refused us, or cannot run what was asked."""


@dataclass(frozen=True)
class UnitResult:
    """One finished work unit: its input and what the stage function returned."""

    unit: Any
    value: Any


def worker_config() -> dict[str, Any]:
    """Dask configuration for a Nanny's worker processes (its ``config``): no sampling profiler.

    Its thread holds task frames for a moment, and a frame it outlives frees its locals there.
    resiliparse's HTMLTree (a PyO3 object bound to the thread that made it) then panics with
    "unsendable, but is being dropped on another thread", a traceback in the worker's log. A
    Nanny merges this over dask's configuration one level deep and hands it to every worker it
    starts, restarts included, so the whole ``distributed`` section goes, not the one key.
    """
    import copy

    import dask

    section = copy.deepcopy(dask.config.get("distributed"))
    section["worker"]["profile"]["enabled"] = False
    return {"distributed": section}


def cluster_security(ca: str = "", cert: str = "", key: str = "", *, role: str = "client") -> Security:
    """TLS settings for one member of the cluster (``client``, ``worker`` or ``scheduler``).

    Empty arguments fall back to ``CAH_TLS_*`` in the environment, then to Dask's own
    configuration (``DASK_DISTRIBUTED__COMM__TLS__*``); each value may be a path or PEM text.
    """
    ca = ca or os.environ.get(TLS_ENV["ca"], "")
    cert = cert or os.environ.get(TLS_ENV["cert"], "")
    key = key or os.environ.get(TLS_ENV["key"], "")
    if not (ca or cert or key):
        return Security()
    if not (ca and cert):
        raise ClusterUnavailable(
            f"TLS needs both a CA file and a {role} certificate (got only "
            f"{'the CA' if ca else 'the certificate'}); make them with deploy/make_tls.sh"
        )
    for value in (ca, cert, key):
        if value and "\n" not in value and not os.path.isfile(value):
            raise ClusterUnavailable(f"TLS file {value} does not exist; make it with deploy/make_tls.sh")
    return Security(
        require_encryption=True,
        tls_ca_file=ca,
        **{f"tls_{role}_cert": cert, f"tls_{role}_key": key or None},
    )


def connect_client(address: str, security: Security, timeout_s: float = 30.0) -> Client:
    """A Dask client connected to ``address``, or one line saying why not."""
    if address.startswith("tls://") and security.get_connection_args("client").get("ssl_context") is None:
        raise ClusterUnavailable(
            f"{address} needs TLS but no client certificate is configured: set tls_ca_file, "
            f"tls_cert_file and tls_key_file (or {', '.join(TLS_ENV.values())})"
        )
    try:
        return Client(address, security=security, timeout=f"{timeout_s}s")
    except CommClosedError as exc:
        reason = exc.__cause__ or exc
        raise ClusterUnavailable(
            f"Dask scheduler at {address} refused us ({one_line(reason)}); check that our "
            f"certificate is signed by the cluster's CA and the address's protocol (tls:// or tcp://)"
        ) from None
    except (OSError, TimeoutError) as exc:
        raise ClusterUnavailable(
            f"Dask scheduler at {address} is unreachable ({one_line(exc)}); is it running, "
            f"and is the port open to this machine?"
        ) from None


def worker_resources(client: Client) -> dict[str, dict[str, float]]:
    """The resources each connected worker advertises, by worker name."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return {str(w.get("name", w["id"])): dict(w.get("resources") or {}) for w in workers}


def can_satisfy(resources: dict[str, float], advertised: Iterable[dict[str, float]]) -> bool:
    """Whether at least one worker advertises every resource in the amount asked."""
    return any(all(have.get(k, 0) >= v for k, v in resources.items()) for have in advertised)


class DaskCompute:
    """What the compute resource does, without Dagster: start or reach the cluster, place and run units.

    Its fields (mode, n_workers, ..., and the kept cluster) are declared by the Dagster resource that
    inherits it, ``cah_assets.resources.ComputeResource``.
    """

    if TYPE_CHECKING:  # the fields of ComputeSettings, and the cluster a Dagster run keeps
        mode: str
        n_workers: int
        threads_per_worker: int
        processes: bool
        memory_limit: str
        scheduler_address: str
        task_retries: int
        local_gpus: int
        processes_per_gpu: int
        allow_cpu_fallback: bool
        tls_ca_file: str
        tls_cert_file: str
        tls_key_file: str
        connect_timeout_s: float
        _keep_cluster: bool
        _cluster: SpecCluster | None

    @property
    def resolved_mode(self) -> str:
        return self.mode or os.environ.get(MODE_ENV) or "local"

    @property
    def resolved_address(self) -> str:
        return self.scheduler_address or os.environ.get(ADDRESS_ENV, "")

    def local_gpu_count(self) -> int:
        if self.local_gpus >= 0:
            return self.local_gpus
        from cah_resources.fleet.cuda_devices import count_visible_cuda_devices

        return count_visible_cuda_devices()

    def _local_cluster(self) -> SpecCluster:
        """One worker per core (or ``n_workers``); the first ``processes_per_gpu`` per CUDA device are pinned to it."""
        per_gpu = max(1, self.processes_per_gpu)
        gpus = self.local_gpu_count() * per_gpu
        total = max(self.n_workers or os.cpu_count() or 1, gpus)
        memory_limit = parse_memory_limit(self.memory_limit, 1, total, logger=log)
        protocol, host = ("tcp://", "127.0.0.1") if self.processes else ("inproc://", None)
        base: dict[str, Any] = {
            "nthreads": self.threads_per_worker,
            "memory_limit": memory_limit,
            "host": host,
            "protocol": protocol,
            "dashboard": False,
            "silence_logs": logging.WARN,
        }
        if self.processes:
            base["config"] = worker_config()
        workers = {}
        for i in range(total):
            options = dict(base)
            if i < gpus:
                options["resources"] = {GPU: 1}
                if self.processes:
                    # Pinning by environment keeps a worker's CUDA context on its own device.
                    options["env"] = {"CUDA_VISIBLE_DEVICES": str(i // per_gpu)}
            elif self.processes and gpus:
                options["env"] = {"CUDA_VISIBLE_DEVICES": ""}
            slot = f"gpu-{i // per_gpu}" + (f"-{i % per_gpu}" if per_gpu > 1 else "")
            name = slot if i < gpus else f"cpu-{i}"
            workers[name] = {"cls": Nanny if self.processes else Worker, "options": options}
        scheduler = {
            "cls": Scheduler,
            "options": {"host": host, "port": 0, "protocol": protocol, "dashboard": False},
        }
        import dask

        # In-process workers read the setting here; worker processes get it with their config.
        with dask.config.set({"distributed.worker.profile.enabled": False}):
            return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.WARN)

    def security(self) -> Security:
        return cluster_security(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)

    @contextmanager
    def client(self) -> Iterator[Client]:
        mode, address = self.resolved_mode, self.resolved_address
        if mode == "local" and self._keep_cluster:
            if self._cluster is None:
                self._cluster = self._local_cluster()
                with Client(self._cluster) as client:
                    self._start_local(client)
            with Client(self._cluster) as client:
                yield client
        elif mode == "local":
            with self._local_cluster() as cluster, Client(cluster) as client:
                self._start_local(client)
                yield client
        elif mode == "remote":
            if not address:
                raise ClusterUnavailable(
                    f"compute mode is 'remote' but no scheduler address is set "
                    f"(compute.scheduler_address or ${ADDRESS_ENV})"
                )
            with connect_client(address, self.security(), self.connect_timeout_s) as client:
                yield client
        else:
            raise ValueError(f"compute mode must be 'local' or 'remote', not {mode!r}")

    def _start_local(self, client: Client) -> None:
        client.wait_for_workers(len(client.cluster.worker_spec))
        if self.processes:
            # A plain function, so that workers unpickle nothing that imports Dagster.
            client.register_worker_callbacks(setup=exit_with_parent)

    def has_gpu_workers(self) -> bool:
        """Whether the cluster has a worker advertising ``GPU`` (asked of the scheduler in remote mode)."""
        if self.resolved_mode == "local":
            return self.local_gpu_count() > 0
        with self.client() as client:
            return can_satisfy({GPU: 1}, worker_resources(client).values())

    def gpu_resources(self) -> dict[str, float] | None:
        """What a GPU stage should ask for: ``{"GPU": 1}`` when GPU workers exist, else None (CPU)."""
        if self.has_gpu_workers():
            return {GPU: 1}
        if self.allow_cpu_fallback:
            return None
        raise ClusterUnavailable(
            "no worker advertises GPU and compute.allow_cpu_fallback is false: start a GPU "
            "executor (cah worker --gpu) or allow the CPU fallback"
        )

    def _placeable(self, client: Client, resources: dict[str, float] | None) -> dict[str, float] | None:
        """The resources to submit with, after checking some worker can satisfy them."""
        if not resources:
            return resources
        advertised = list(worker_resources(client).values())
        if can_satisfy(resources, advertised):
            return resources
        if set(resources) == {GPU} and self.allow_cpu_fallback:
            log.warning("no worker advertises GPU; running GPU work on CPU workers")
            return None
        raise ClusterUnavailable(
            f"no worker advertises {resources} (workers offer {advertised or 'nothing'}); tasks "
            f"would wait forever: start a worker with those resources"
        )

    def run_units(
        self,
        fn: Callable[..., Any],
        units: Iterable[Any],
        *,
        on_result: Callable[[UnitResult, int, int], None] | None = None,
        on_progress: Callable[[str], None] | None = None,
        resources: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> list[UnitResult]:
        """Run ``fn(unit, **kwargs)`` for every unit on the cluster; results come back in unit order.

        ``on_result(result, done, total)`` is called as each unit finishes, for progress logs;
        ``on_progress(line)`` with each line a unit publishes while it runs (unit_progress.UnitProgress).
        A unit whose worker dies is rerun by the scheduler elsewhere, so every unit's result
        comes back exactly once; units must therefore write their outputs idempotently.
        """
        units = list(units)
        if not units:
            return []
        with self.client() as client:
            if on_progress is not None:
                client.subscribe_topic(PROGRESS_TOPIC, lambda event: on_progress(event[1]))
            resources = self._placeable(client, resources)
            futures = client.map(fn, units, pure=False, retries=self.task_retries, resources=resources, **kwargs)
            position = {future.key: i for i, future in enumerate(futures)}
            results: list[UnitResult | None] = [None] * len(units)
            for done, (future, value) in enumerate(as_completed(futures, with_results=True), 1):
                i = position[future.key]
                results[i] = result = UnitResult(units[i], value)
                if on_result is not None:
                    on_result(result, done, len(units))
            if on_progress is not None:
                client.unsubscribe_topic(PROGRESS_TOPIC)
        return [r for r in results if r is not None]
