"""The scheduler alone, in process (no HTTP): its CPU per decoded token and its time to first token at 1 and 16
streams, on a parameter file, for one copy of lmforge (`--src`). Run it alternately with two copies (or with and
without `--compile`) for a before/after ratio: on a shared machine only interleaved runs compare.

    python benchmarks/bench_serve_step.py --src . --params model_fp32.bin [--compile]

cpu: S requests of --tokens greedy tokens (no end token) submitted at once, the loop turned by hand on this
thread; thread CPU time / tokens, best of --repeats. ttft: S prompts of 16 random common words (bench_serve's)
submitted at once; the mean time from submitting to each request's first token, best of --repeats, in wall time and
in the loop thread's CPU time (the same figure less what other processes took: on a shared machine the steadier).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path


def turn_until(scheduler, prompts: list[list[int]], tokens: int) -> tuple[dict[int, float], dict[int, float]]:
    """Submit the prompts together and turn the loop until all finish: each request's time to its first token, wall
    and this thread's CPU (which the machine's other load does not stretch)."""
    import torch

    from lmforge.inference.sampling import SamplingParams

    first: dict[int, float] = {}
    first_cpu: dict[int, float] = {}
    done: list[int] = []
    start, start_cpu = time.perf_counter(), time.thread_time()

    def sink(i: int):
        def event(kind: str, payload: object) -> None:
            if kind == "token" and i not in first:
                first[i] = time.perf_counter() - start
                first_cpu[i] = time.thread_time() - start_cpu
            elif kind in ("done", "error"):
                done.append(i)
        return event

    for i, prompt in enumerate(prompts):
        scheduler.submit(prompt, SamplingParams(temperature=0, max_tokens=tokens), sink(i), stop_ids=[])
    with torch.inference_mode():
        while len(done) < len(prompts):
            scheduler._turn()
    return first, first_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="folder holding the lmforge package to measure")
    ap.add_argument("--params", required=True, help="parameter file (a real tokenizer: text prompts)")
    ap.add_argument("--compile", action="store_true", help="the scheduler's compiled decode step (inductor)")
    ap.add_argument("--tokens", type=int, default=128, help="tokens a request decodes (cpu)")
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.src).resolve()))
    sys.path.insert(1, str(Path(__file__).parent))
    import bench_serve
    from lmforge.serve.loading import engine_from_params
    from lmforge.serve.scheduler import Scheduler
    from lmforge.utils import configure_threads

    configure_threads(1)
    engine = engine_from_params(args.params)
    scheduler = Scheduler(engine, slots=16, **({"compile": "inductor"} if args.compile else {}))
    scheduler.warm_up()
    rng = random.Random(0)
    prompts = [engine.encode_prompt(bench_serve.make_prompt(rng, True)) for _ in range(16)]
    for streams in (1, 16):
        cpu = []
        for _ in range(args.repeats):
            start = time.thread_time()
            turn_until(scheduler, prompts[:streams], args.tokens)
            cpu.append((time.thread_time() - start) / args.tokens * 1e6)
        ttft, ttft_cpu = [], []
        for _ in range(args.repeats):
            wall, thread = turn_until(scheduler, prompts[:streams], 1)
            ttft.append(sum(wall.values()) / streams * 1e3)
            ttft_cpu.append(sum(thread.values()) / streams * 1e3)
        print(f"{streams} streams: {min(cpu):.0f} us CPU a step, TTFT {min(ttft):.2f} ms "
              f"(CPU {min(ttft_cpu):.2f} ms)")


if __name__ == "__main__":
    main()
