"""The compute engine: hands a run's work units to a Dask distributed cluster and gathers results."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import dagster as dg
from distributed import Client, LocalCluster, as_completed


@dataclass(frozen=True)
class UnitResult:
    """One finished work unit: its input and what the stage function returned."""

    unit: Any
    value: Any


class ComputeResource(dg.ConfigurableResource):
    """Dask distributed cluster the assets submit their work to (a LocalCluster by default)."""

    mode: str = "local"
    n_workers: int = 0
    threads_per_worker: int = 1
    processes: bool = True
    memory_limit: str = "auto"
    scheduler_address: str = ""
    task_retries: int = 2

    def _local_cluster(self) -> LocalCluster:
        workers = self.n_workers or os.cpu_count() or 1
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=self.threads_per_worker,
            processes=self.processes,
            memory_limit=self.memory_limit,
            dashboard_address=None,
        )

    @contextmanager
    def client(self) -> Iterator[Client]:
        if self.mode == "local":
            with self._local_cluster() as cluster, Client(cluster) as client:
                yield client
        elif self.mode == "remote":
            if not self.scheduler_address:
                raise ValueError("compute.mode is 'remote' but compute.scheduler_address is empty")
            with Client(self.scheduler_address, timeout="30s") as client:
                yield client
        else:
            raise ValueError(f"compute.mode must be 'local' or 'remote', not {self.mode!r}")

    def run_units(
        self,
        fn: Callable[..., Any],
        units: Iterable[Any],
        *,
        on_result: Callable[[UnitResult, int, int], None] | None = None,
        resources: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> list[UnitResult]:
        """Run ``fn(unit, **kwargs)`` for every unit on the cluster; results come back in unit order.

        ``on_result(result, done, total)`` is called as each unit finishes, for progress logs.
        """
        units = list(units)
        if not units:
            return []
        with self.client() as client:
            futures = client.map(
                fn, units, pure=False, retries=self.task_retries, resources=resources, **kwargs
            )
            position = {future.key: i for i, future in enumerate(futures)}
            results: list[UnitResult | None] = [None] * len(units)
            for done, (future, value) in enumerate(as_completed(futures, with_results=True), 1):
                i = position[future.key]
                results[i] = UnitResult(units[i], value)
                if on_result is not None:
                    on_result(results[i], done, len(units))
        return [r for r in results if r is not None]
