"""Running independent tasks here or on a Dask cluster, the same function either way.

`Executor` runs each task in this process (``workers=1``), on a `dask.distributed.LocalCluster`
of ``workers`` single-threaded processes, or on a running cluster (``scheduler``, an address
``tcp://HOST:PORT``; output directories must then be on a filesystem the workers share). Sweeps,
comparisons, the ablation and the main job all run their trainings and simulations through it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable

from tqdm.auto import tqdm

from fourbit.traces.errors import ConfigError, FourbitError

__all__ = ["Executor"]

_TRACKER_NOTE = "ignore:resource_tracker:UserWarning"


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
        self._futures: dict = {}

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
                # workers stopped mid-task leave semaphores that multiprocessing's resource tracker
                # (a process started with these warning options) unlinks at exit, with a warning
                # that nothing was lost
                if _TRACKER_NOTE not in sys.warnoptions:
                    sys.warnoptions.append(_TRACKER_NOTE)
                # the workers ignore SIGINT (inherited when they start): Ctrl-C reaches this process
                # alone, which stops them (`__exit__`) instead of each printing its own traceback
                previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
                try:
                    cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, host="127.0.0.1",
                                           silence_logs=logging.CRITICAL)  # a task's error returns as its result
                finally:
                    signal.signal(signal.SIGINT, previous)
                self.client = Client(cluster)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.client is not None:
            cluster = self.client.cluster
            if exc_type is KeyboardInterrupt:  # stop the work under way before the cluster goes
                self.client.cancel(list(self._futures), force=True)
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
        self._futures = futures
        for fut in as_completed(futures):
            key = futures[fut]
            try:
                result, error = fut.result(), None
            except Exception as exc:  # noqa: BLE001 (a task's error, reported as its result)
                result, error = None, f"{type(exc).__name__}: {exc}"
            done(key, result, error)
            bar.update(1)
