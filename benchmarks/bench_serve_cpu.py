"""CPU time a streamed token costs an lmforge server: the whole process's and the scheduler thread's share.

On a shared machine wall-clock throughput moves 2-5x with the other jobs' load; the CPU a server spends per token
moves far less, so comparing two versions (run this with each, alternately) shows a change of a few tens of per cent
that throughput ratios hide. One server in this process (`--src`: the folder holding the `lmforge` package to
measure), its clients in another process (`bench_serve.one_request`, streaming completions with `ignore_eos`).

    python benchmarks/bench_serve_cpu.py --src . --params model_fp32.bin --streams 16
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

CLIENTS = """
import random, sys, threading
sys.path.insert(0, {bench!r})
import bench_serve
rng, got = random.Random(0), []
def client():
    for _ in range({requests}):
        got.append(bench_serve.one_request({port}, bench_serve.make_prompt(rng, True), {tokens})[1])
threads = [threading.Thread(target=client) for _ in range({streams})]
[t.start() for t in threads]; [t.join() for t in threads]
print(sum(got))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="folder holding the lmforge package to measure")
    ap.add_argument("--params", required=True, help="parameter file to serve (a real tokenizer: text prompts)")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4, help="requests each stream sends, one after another")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.src).resolve()))
    from lmforge.serve import scheduler as sched
    from lmforge.serve.app import BackgroundServer, create_app
    from lmforge.serve.loading import engine_from_params
    from lmforge.serve.protocol import Limits
    from lmforge.utils import configure_threads

    configure_threads(1)
    turn_cpu = [0.0]
    turn = sched.Scheduler._turn

    def timed_turn(self: sched.Scheduler) -> None:
        start = time.thread_time()
        turn(self)
        turn_cpu[0] += time.thread_time() - start

    sched.Scheduler._turn = timed_turn
    scheduler = sched.Scheduler(engine_from_params(args.params), slots=16, max_requests=1024)
    scheduler.warm_up()
    scheduler.start()
    server = BackgroundServer(create_app(scheduler, "bench", Limits())).start()

    def clients(requests: int) -> int:
        code = CLIENTS.format(bench=str(Path(__file__).parent.resolve()), requests=requests, port=server.port,
                              tokens=args.tokens, streams=args.streams)
        return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)

    clients(1)  # warm
    cpu, wall, turn_cpu[0] = time.process_time(), time.perf_counter(), 0.0
    tokens = clients(args.requests)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{args.label} streams {args.streams}: {1000 * cpu / tokens:.4f} ms CPU/token "
          f"(scheduler thread {1000 * turn_cpu[0] / tokens:.4f}), {tokens / wall:.1f} tok/s")
    scheduler.stop()
    server.stop()


if __name__ == "__main__":
    main()
