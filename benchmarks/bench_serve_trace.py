"""Where a streamed request's time to first token goes over HTTP, stage by stage, at 1 and 16 streams.

A traced lmforge server runs in a child process (`--serve`), on a parameter file, with timestamps taken at each
stage of a request's way to its first token; the clients (bench_serve's closed loop: C streams of --requests
streaming completions, 16 random common words a prompt, --tokens greedy tokens) tag each request with a header
and note when they sent it and when its first chunk arrived. Both sides read CLOCK_MONOTONIC (Python's
`time.monotonic` on Linux), so one request's stages line up across the two processes. The tracing wraps the
server's own functions from outside (the ASGI app, the API's body reader, spec builder and `Call`, the scheduler's
`_take_new`, `_prefill`, `_sample`, `_decode`, `LoopRelay._deliver`): nothing in lmforge knows of it, and `--src`
traces another copy of lmforge (one that has these names) the same way.

    python benchmarks/bench_serve_trace.py --params model_fp32.bin [--src DIR] [--streams 1 16] [--rounds 3]

Printed per stream count: the mean of each stage's duration over all requests, the mean time to first token, the
sizes of the admissions (how many requests each prefill took), and the scheduler's prefills and decode steps in
wall and thread CPU time (wall above CPU: the scheduler thread waited for the GIL or for a core).
"""

from __future__ import annotations

import argparse
import bisect
import contextvars
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# (stage, what the time up to it is spent on), in the order a request passes them
STAGES = [("recv", "client send, HTTP parse, waiting for the event loop"),
          ("body", "body read"), ("spec", "validated and tokenised"), ("submit", "submitted to the scheduler"),
          ("taken", "taken from the inbox by the scheduler"), ("admit", "prefill starts"),
          ("prefilled", "prefill forward done"), ("first_post", "first token sampled and posted"),
          ("deliver", "delivered on the event loop"), ("next", "handed to the stream"),
          ("sent", "first byte written"), ("first", "read by the client")]
_TRACE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("trace", default=None)


def thread_times() -> tuple[float, float, float]:
    """(wall, on a core, waiting for a core) seconds of the calling thread so far: its CPU clock, and the run-queue
    wait from the kernel's schedstat (Linux; a running thread's wait is up to date there, its CPU time is not, hence
    the CPU clock). Over an interval, wall less the two others is time the thread slept, which for the scheduler
    thread in a forward is waiting for the GIL."""
    with open("/proc/thread-self/schedstat") as f:
        waiting = f.read().split()[1]
    return time.monotonic(), time.thread_time(), int(waiting) / 1e9


def spent(since: tuple[float, float, float]) -> tuple[float, float, float, float]:
    """(wall, CPU, waiting for a core, blocked) seconds since `thread_times()` gave `since`."""
    now = thread_times()
    wall, cpu, queued = (b - a for a, b in zip(since, now))
    return wall, cpu, queued, wall - cpu - queued


class Recorder:
    """The server side's timestamps: per HTTP request (by the client's tag), per scheduler request (by rid), the
    event loop's deliveries and the scheduler's forwards (rows, wall, CPU, waiting for a core, blocked)."""

    def __init__(self) -> None:
        self.http: list[dict[str, Any]] = []
        self.rids: dict[int, dict[str, float]] = {}
        self.delivers: list[float] = []
        self.prefills: list[tuple[int, float, float, float, float]] = []
        self.decodes: list[tuple[int, float, float, float, float]] = []

    def dump(self, path: str) -> None:
        Path(path).write_text(json.dumps({"http": self.http, "rids": self.rids, "delivers": self.delivers,
                                          "prefills": self.prefills, "decodes": self.decodes}))


def trace_scheduler(rec: Recorder) -> None:
    """Wrap the scheduler's stages (see the module docstring)."""
    import lmforge.serve.scheduler as sch

    S = sch.Scheduler
    take_new, prefill, sample, decode, deliver = S._take_new, S._prefill, S._sample, S._decode, sch.LoopRelay._deliver

    def _take_new(self: Any, block: bool) -> None:
        before = len(self._waiting)
        take_new(self, block)
        for r in self._waiting[before:]:
            rec.rids.setdefault(r.rid, {})["taken"] = time.monotonic()

    def _prefill(self: Any, requests: list, base: int) -> Any:
        since = thread_times()
        out = prefill(self, requests, base)
        times = spent(since)
        rec.prefills.append((len(requests), *times))
        for r in requests:
            rec.rids.setdefault(r.rid, {}).update(admit=since[0], prefilled=since[0] + times[0], batch=len(requests))
        return out

    def _sample(self: Any, request: Any, *args: Any) -> None:
        first = request.first_token_at is None
        sample(self, request, *args)
        if first:
            rec.rids.setdefault(request.rid, {})["first_post"] = request.first_token_at

    def _decode(self: Any) -> None:
        since, rows = thread_times(), self.busy_slots
        decode(self)
        rec.decodes.append((rows, *spent(since)))

    def _deliver(self: Any) -> None:
        rec.delivers.append(time.monotonic())
        deliver(self)

    S._take_new, S._prefill, S._sample, S._decode, sch.LoopRelay._deliver = (_take_new, _prefill, _sample, _decode,
                                                                              _deliver)


def trace_api() -> None:
    """Wrap the HTTP side's stages: body read, spec (validation and tokenising), submission, first event taken."""
    import lmforge.serve.app as app

    read_body, completion_spec, Call = app.read_body, app.completion_spec, app.Call

    def mark(name: str) -> None:
        trace = _TRACE.get()
        if trace is not None and name not in trace:
            trace[name] = time.monotonic()

    async def traced_read_body(request: Any, limit: int) -> dict:
        body = await read_body(request, limit)
        mark("body")
        return body

    def traced_spec(*args: Any, **kwargs: Any) -> Any:
        spec = completion_spec(*args, **kwargs)
        mark("spec")
        return spec

    class TracedCall(Call):
        def __init__(self, scheduler: Any, spec: Any) -> None:
            super().__init__(scheduler, spec)
            mark("submit")
            _TRACE.get()["rid"] = self.requests[0].rid

        async def next(self, timeout: float) -> Any:
            item = await super().next(timeout)
            if item is not None and item[1] == "token":
                mark("next")
            return item

    app.read_body, app.completion_spec, app.Call = traced_read_body, traced_spec, TracedCall


def traced_asgi(inner: Any, rec: Recorder) -> Any:
    """The app, noting when a request reaches it and when its first body bytes are handed to the server."""
    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await inner(scope, receive, send)
        trace = {"recv": time.monotonic(), "tag": dict(scope["headers"]).get(b"x-trace", b"").decode()}
        _TRACE.set(trace)
        rec.http.append(trace)

        async def traced_send(message: dict) -> None:
            if message["type"] == "http.response.body" and message.get("body") and "sent" not in trace:
                trace["sent"] = time.monotonic()
            await send(message)
        await inner(scope, receive, traced_send)
    return app


def serve(port: int, params: str, slots: int, out: str) -> None:
    """The traced server; writes its record to `out` when terminated."""
    from lmforge.serve.app import BackgroundServer, create_app
    from lmforge.serve.loading import engine_from_params
    from lmforge.serve.protocol import Limits
    from lmforge.serve.scheduler import Scheduler
    from lmforge.utils import configure_threads

    configure_threads(1)
    rec = Recorder()
    trace_scheduler(rec)
    trace_api()
    scheduler = Scheduler(engine_from_params(params), slots=slots, max_requests=1024)
    scheduler.warm_up()
    rec.rids.clear()
    rec.prefills.clear()
    rec.decodes.clear()
    scheduler.start()
    BackgroundServer(traced_asgi(create_app(scheduler, "bench", Limits()), rec), port=port).start()

    def stop(*_: Any) -> None:
        rec.dump(out)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    threading.Event().wait()


def one_request(port: int, prompt: str, tokens: int, tag: str) -> dict[str, Any]:
    """bench_serve's streaming request, tagged for the server's trace; its start and first token on the server's
    clock (the request's own start is a few microseconds later: its body is encoded first)."""
    import bench_serve

    t0 = time.monotonic()
    ttft = bench_serve.one_request(port, prompt, tokens, headers={"X-Trace": tag})[0]
    return {"tag": tag, "t0": t0, "first": None if math.isnan(ttft) else t0 + ttft}


def clients(port: int, streams: int, requests: int, tokens: int, label: str) -> list[dict[str, Any]]:
    """bench_serve's closed loop: `streams` threads, each sending `requests` streaming requests one after another."""
    import bench_serve

    rng, results = random.Random(streams), []

    def client(i: int) -> None:
        for j in range(requests):
            results.append(one_request(port, bench_serve.make_prompt(rng, True), tokens, f"{label}:{streams}:{i}:{j}"))
    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def stage_table(client_rows: list[dict], server: dict) -> dict[int, dict[str, float]]:
    """Per stream count: the mean duration of each stage (ms, keyed by the stage it ends at) and the mean TTFT."""
    by_tag = {h["tag"]: h for h in server["http"] if "rid" in h}
    delivers = sorted(server["delivers"])
    table: dict[int, list[dict[str, float]]] = {}
    for c in client_rows:
        h = by_tag.get(c["tag"])
        if h is None or c["first"] is None:
            continue
        t = {"t0": c["t0"], "first": c["first"], **h, **server["rids"][str(h["rid"])]}
        t["deliver"] = delivers[min(bisect.bisect_left(delivers, t["first_post"]), len(delivers) - 1)]
        table.setdefault(int(c["tag"].split(":")[1]), []).append(t)
    out = {}
    for streams, rows in sorted(table.items()):
        stages, before = {}, "t0"
        for name, _ in STAGES:
            stages[name] = 1000 * statistics.mean(r[name] - r[before] for r in rows)
            before = name
        stages["ttft"] = 1000 * statistics.mean(r["first"] - r["t0"] for r in rows)
        stages["batch"] = statistics.mean(r["batch"] for r in rows)
        out[streams] = stages
    return out


def forwards(server: dict) -> str:
    """The scheduler's prefills (by requests) and decode steps (by rows, 1 and the most): mean ms of wall time, on a
    core, waiting for a core (other processes), blocked (the GIL)."""
    lines = ["  scheduler forwards, mean ms: wall = CPU + waiting for a core + blocked (GIL)"]
    for name, rows in (("prefill of", server["prefills"]), ("decode step of", server["decodes"])):
        groups: dict[int, list] = {}
        for n, *times in rows:
            groups.setdefault(n, []).append(times)
        for n, v in sorted(groups.items()):
            if n and (name == "prefill of" or n in (1, max(groups))):
                wall, cpu, queued, blocked = (1000 * statistics.mean(t[i] for t in v) for i in range(4))
                lines.append(f"    {name} {n:2d} ({len(v):3d}): {wall:6.2f} = {cpu:6.2f} + {queued:6.2f} + "
                             f"{blocked:6.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", required=True, help="parameter file (text prompts through its tokenizer)")
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1]),
                    help="folder holding the lmforge to trace")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=3, help="rounds over --streams (1, 16, 1, 16, ...)")
    ap.add_argument("--requests", type=int, default=2, help="requests each stream sends, one after another")
    ap.add_argument("--tokens", type=int, default=32, help="tokens decoded per request")
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    if args.serve:
        return serve(args.port, args.params, args.slots, args.out)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    record = Path(tempfile.gettempdir()) / f"bench_serve_trace.{os.getpid()}.json"
    paths = [args.src, *filter(None, [os.environ.get("PYTHONPATH")])]  # --src first, other paths kept
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "LMFORGE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port), "--params", args.params,
                              "--slots", str(args.slots), "--out", str(record)], env=env)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if child.poll() is not None:
                    raise SystemExit("the traced server did not start")
                time.sleep(0.2)
        one_request(port, "the json module", 4, "warm")
        rows = [r for k in range(args.rounds) for n in args.streams
                for r in clients(port, n, args.requests, args.tokens, str(k))]
    finally:
        child.terminate()
        child.wait(timeout=30)
    server = json.loads(record.read_text())
    record.unlink()
    for streams, stages in stage_table(rows, server).items():
        print(f"{streams} stream(s): time to first token {stages['ttft']:.2f} ms (mean), "
              f"{stages['batch']:.1f} requests a prefill (mean over requests)")
        for name, what in STAGES:
            print(f"  {stages[name]:7.2f} ms  -> {name:10s} {what}")
    print(forwards(server))


if __name__ == "__main__":
    main()
