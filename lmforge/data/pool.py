"""The local process pool that runs the data package's tasks (pipeline shards, tokenizer files).

It is its own module because two stages use it (`pipeline.py` and `tokenize.py`) and neither should import the
other for it. A task is a plain function of one picklable argument, so the same task runs here or on Dask workers
(`dask_runner.py`), through the same `MapFn` signature.

Workers die with their parent: a `kill -9` of `lmforge data run` must not leave workers writing for seconds after
it (they would race the rerun's cleanup of their temporaries). On Linux each worker asks the kernel for SIGKILL
when its parent dies (`prctl(PR_SET_PDEATHSIG)`); elsewhere a watchdog thread polls the parent's pid.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, Callable

from lmforge.utils import LmforgeError

MapFn = Callable[[Callable[[Any], dict], list, str], list[dict]]
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
MAX_WORKERS = 1024  # processes; far beyond any one machine's cores, low enough that a typo cannot fork-bomb it


def check_workers(workers: int | None, flag: str = "--workers") -> int:
    """The worker count to use: all cores this process may use when None, else at least 1 (named when not)."""
    if workers is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        raise LmforgeError(f"{flag} must be a whole number in [1, {MAX_WORKERS}], got {workers!r}")
    return workers


def _die_with_parent(parent_pid: int) -> None:
    """Arrange for this process to end when `parent_pid` ends (see the module docstring)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before the request was made
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _init_worker(parent_pid: int) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # one process per core already: no thread pools inside a worker
    _die_with_parent(parent_pid)


class LocalPool:
    """A `MapFn` over a pool of `workers` spawned processes (this process when 1), results in task order.

    The pool starts at the first call and serves every stage of a run: a spawned worker pays the imports of the
    steps (trafilatura, the language model) once, not once per stage. Spawned, not forked: nothing is inherited
    from the parent, so a task behaves the same here and on a Dask worker. Use it as a context manager.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, fn: Callable[[Any], dict], tasks: list, desc: str) -> list[dict]:
        from tqdm import tqdm

        results: list[dict | None] = [None] * len(tasks)
        with tqdm(total=len(tasks), desc=desc, unit="shard", disable=None) as bar:
            if self.workers <= 1 or len(tasks) <= 1 and self._pool is None:
                for i, t in enumerate(tasks):
                    results[i] = fn(t)
                    bar.update()
                return results  # type: ignore[return-value]
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                                 initializer=_init_worker, initargs=(os.getpid(),))
            futures = {self._pool.submit(fn, t): i for i, t in enumerate(tasks)}
            for f in as_completed(futures):
                results[futures[f]] = f.result()
                bar.update()
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> "LocalPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
