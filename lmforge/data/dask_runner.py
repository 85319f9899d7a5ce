"""The same pipeline on a Dask cluster, for more than one machine (`pip install lmforge[dist]`).

Why Dask and not Ray Data: see "More than one machine" in `lmforge/data/README.md` (in short: our tasks are
already plain functions of one shard, which Dask's futures run unchanged, and the extra is ~70 MB against ~600 MB).

Requirement: every worker must see `--out` and the inputs at the same paths (a shared filesystem such as NFS or
a mounted bucket), since tasks write their shards where the driver later reads them, as datatrove's
executors assume too. Results are byte-identical to the local runner's (a test checks it): the tasks are the
same functions and every choice in them is deterministic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from lmforge.data.pipeline import PipelineConfig, ShardTask, run_pipeline
from lmforge.data.pool import MapFn
from lmforge.utils import LmforgeError


def dask_map(client) -> MapFn:
    """A `map_fn` for `run_pipeline` that runs each task on the cluster; results come back in task order."""

    def run(fn: Callable[[ShardTask], dict], tasks: list[ShardTask], desc: str) -> list[dict]:
        from tqdm import tqdm

        from distributed import as_completed

        futures = client.map(fn, tasks, pure=False, key=[f"{desc}-{i}-{fn.__name__}" for i in range(len(tasks))])
        for _ in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="shard", disable=None):
            pass
        return client.gather(futures)

    return run


def run_pipeline_dask(inputs: list[str | Path], out: str | Path, config: PipelineConfig | None = None,
                      scheduler: str | None = None, workers: int | None = None,
                      min_tasks: int = 8) -> dict[str, Any]:
    """Run the pipeline on the Dask scheduler at `scheduler`, or on a local cluster of `workers` processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise LmforgeError("the dask engine needs the optional extra: pip install 'lmforge[dist]'") from e
    import os

    if scheduler:
        with Client(scheduler) as client:
            n = len(client.scheduler_info()["workers"])
            return run_pipeline(inputs, out, config, workers=n, map_fn=dask_map(client),
                                engine=f"dask ({scheduler})", min_tasks=min_tasks)
    n = workers or len(os.sched_getaffinity(0))
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        return run_pipeline(inputs, out, config, workers=n, map_fn=dask_map(client),
                            engine="dask (local cluster)", min_tasks=min_tasks)
