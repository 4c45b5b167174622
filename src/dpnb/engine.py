"""Independent jobs on Dask distributed: the engine under ``dpnb book --workers`` and ``dpnb sweep``.

A job is a module-level function and its arguments (Dask pickles it by reference, so a worker
needs ``dpnb`` installed, and a worker on another machine needs the repository and the data at
the same paths). :func:`connect` gives a client of a ``LocalCluster`` with one single-threaded
worker process per job slot, or of a running scheduler (``--scheduler tcp://host:8786``) for a
real cluster. :func:`run` keeps at most ``slots`` jobs in flight, in the order given, and reports
each one as it finishes; with ``stop_after_failure`` no new job starts once one has failed (the
running ones finish), otherwise every job runs and failures are collected.

Example (``tests/test_sweep.py`` runs the same)::

    with connect(workers=2) as client:
        outcomes = run([Job("a", pow, (2, 10)), Job("b", pow, (3, 2))], client=client)
    [o.value for o in outcomes]  # [1024, 9]
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dpnb.params import ParameterError, check_int

__all__ = ["Job", "Outcome", "connect", "capacity", "run"]


@dataclass(frozen=True)
class Job:
    """``fn(*args)`` under a name of the caller's choosing."""

    key: Hashable
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What became of one job: its value, or the exception it raised; seconds from submission."""

    key: Hashable
    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@contextlib.contextmanager
def connect(*, workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A Dask ``Client``: of a new ``LocalCluster`` of ``workers`` processes (one thread each, no
    memory limit, no dashboard), or of the running scheduler at ``scheduler``."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as e:
            raise ParameterError(f"--scheduler: no Dask scheduler answers at {scheduler!r} ({e})") from None
        try:
            yield client
        finally:
            client.close()
        return
    import dask

    n = check_int("--workers", workers, low=1)
    # Dask's nanny gives its workers MALLOC_TRIM_THRESHOLD_=65536 (and one BLAS thread); the notebooks' kernels
    # would inherit it, and PyTorch's allocations then run about 1.5x slower. The workers get a plain environment.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}), \
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=0,
                         dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        yield client


def capacity(client: Any) -> int:
    """How many jobs the client's cluster runs at once: its workers' threads together."""
    return max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))


def run(jobs: Sequence[Job], *, client: Any, slots: int | None = None, stop_after_failure: bool = False,
        on_start: Callable[[Job], None] | None = None,
        on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run ``jobs`` with at most ``slots`` in flight (default: :func:`capacity`); outcomes in the order
    the jobs were given.

    Jobs not started because an earlier one failed (``stop_after_failure``) have no outcome."""
    from distributed import as_completed

    limit = check_int("slots", slots, low=1) if slots is not None else capacity(client)
    queue = list(jobs)
    outcomes: dict[Hashable, Outcome] = {}
    started: dict[Any, tuple[Job, float]] = {}
    failed = False
    pending = as_completed()

    def submit() -> None:
        while queue and len(started) < limit and not (failed and stop_after_failure):
            job = queue.pop(0)
            if on_start is not None:
                on_start(job)
            fut = client.submit(job.fn, *job.args, key=f"dpnb-{job.key}-{time.time_ns()}", pure=False)
            started[fut] = (job, time.perf_counter())
            pending.add(fut)

    submit()
    while started:
        fut = next(pending)
        job, t0 = started.pop(fut)
        try:
            out = Outcome(job.key, value=fut.result(), seconds=time.perf_counter() - t0)
        except Exception as e:  # the job's own exception, re-raised here by Dask
            out = Outcome(job.key, error=e, seconds=time.perf_counter() - t0)
            failed = True
        outcomes[job.key] = out
        if on_done is not None:
            on_done(out)
        submit()
    return [outcomes[j.key] for j in jobs if j.key in outcomes]
