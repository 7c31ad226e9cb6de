"""Running independent tasks here or on a Dask cluster, the same function either way.

`Executor` runs each task in this process (``workers=1``), on a `dask.distributed.LocalCluster`
of ``workers`` single-threaded processes, or on a running cluster (``scheduler``, an address
``tcp://HOST:PORT``; output directories must then be on a filesystem the workers share). Sweeps,
comparisons, the ablation and the main job all run their trainings and simulations through it.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable

from tqdm.auto import tqdm

from fourbit.traces.errors import ConfigError, FourbitError

__all__ = ["Executor"]


class Executor:
    """Runs tasks and calls ``done(key, result, error)`` as each finishes.

    An exception of a task is its error (a `FourbitError` by its message, anything else with a
    short traceback), so one failing task does not stop the others; a KeyboardInterrupt stops
    everything. Use as a context manager (the cluster is started and closed with it).

    Raises ConfigError for ``workers`` < 1.
    """

    def __init__(self, workers: int = 1, scheduler: str | None = None) -> None:
        if workers < 1:
            raise ConfigError(f"workers = {workers} is out of range: allowed an integer >= 1")
        self.workers, self.scheduler = workers, scheduler
        self.client = None

    def __enter__(self) -> Executor:
        if self.scheduler or self.workers > 1:
            from dask.distributed import Client, LocalCluster

            if self.scheduler:
                try:
                    self.client = Client(self.scheduler, timeout="20s")
                except (OSError, ValueError, TimeoutError) as exc:  # a bad address, nobody listening
                    raise ConfigError(f"--scheduler {self.scheduler!r}: no dask.distributed scheduler reached "
                                      f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
            else:
                cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, host="127.0.0.1")
                self.client = Client(cluster)
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            cluster = self.client.cluster
            self.client.close()
            if cluster is not None and not self.scheduler:
                cluster.close()

    def map(self, fn: Callable, tasks: list[tuple], done: Callable, bar: tqdm,
            groups: list[str] | None = None) -> None:
        """Run ``fn(*args)`` for each ``(key, args)`` of ``tasks``. On Dask, tasks of one group go
        to the same worker (its caches then serve the whole group)."""
        if self.client is None:
            for key, args in tasks:
                try:
                    result, error = fn(*args), None
                except FourbitError as exc:
                    result, error = None, f"{type(exc).__name__}: {exc}"
                except Exception as exc:  # noqa: BLE001 (one task's bug must not stop the others; it is reported)
                    result, error = None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
                done(key, result, error)
                bar.update(1)
            return
        from dask.distributed import as_completed

        workers = sorted(self.client.scheduler_info()["workers"])
        home: dict[str, str] = {}
        futures = {}
        for i, (key, args) in enumerate(tasks):
            group = groups[i] if groups else key
            where = home.setdefault(group, workers[len(home) % len(workers)])
            fut = self.client.submit(fn, *args, pure=False, key=f"fourbit-{key}-{os.urandom(4).hex()}",
                                     workers=[where], allow_other_workers=True)
            futures[fut] = key
        for fut in as_completed(futures):
            key = futures[fut]
            try:
                result, error = fut.result(), None
            except Exception as exc:  # noqa: BLE001 (a task's error, reported as its result)
                result, error = None, f"{type(exc).__name__}: {exc}"
            done(key, result, error)
            bar.update(1)
