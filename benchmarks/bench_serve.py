"""Serving throughput and time to first token: `lmforge serve`'s scheduler against a plain FastAPI loop over
Hugging Face transformers' `generate`, on the same random weights, at 1, 4, 16 and 64 concurrent streams (CPU).

Each server runs in its own process (this script with `--serve NAME`), so neither competes with the clients for the
GIL. The peer is what a first server usually is: one FastAPI route that runs `model.generate` (fp32, KV cache,
SDPA) for one request at a time under a lock, streaming each token as a server-sent event through a streamer.
Both decode exactly `--tokens` tokens per request (`ignore_eos`; the peer has no end token), greedy, from the same
16-token prompts (token ids). Each of C clients sends `--requests` requests one after another over streaming HTTP;
throughput is all tokens received / wall time, TTFT is the mean time from sending to the first token.
Servers run side by side and are measured interleaved (each streams count: lmforge, each peer, lmforge, ... for
`--rounds` rounds), so a change in the machine's load hits all alike; ratios are per round, reported as the median
and range. `--peers old --old-src DIR` compares with another copy of lmforge (before/after a change);
`--scheduler-only` runs the same closed loop on the scheduler in-process (no HTTP, so the scheduler's own share of
time to first token shows), alternating child processes of lmforge and --old-src.
llama.cpp's server (llama-cpp-python[server], built from source in a venv of its own: a benchmark dependency only)
needs a real tokenizer: `--params model_fp32.bin --gguf model.gguf --peers llamacpp --llama-python VENV/bin/python`
serves the parameter file from lmforge and its GGUF export (the same weights) from llama.cpp, prompts are 16 random
common words, and llama.cpp, which has no ignore_eos, gets every special token banned by logit_bias.

    .venv/bin/python benchmarks/bench_serve.py [--streams 1 4 16 64] [--tokens 32] [--threads 1] [--rounds 3]
        [--peers transformers old llamacpp] [--old-src OLD] [--params F --gguf F --llama-python PY] [--compile]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from fastapi import Request  # noqa: E402 - at module level: FastAPI resolves a route's annotations in its globals
SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=4096)  # bench_inference's tiny shape
PROMPT_LEN = 16
WORDS = ["the", "module", "function", "returns", "a", "new", "list", "of", "string", "file", "object", "value",
         "json", "data", "time", "path", "class", "method", "error", "number"]


def build_model():
    import torch

    from lmforge.model import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(**SHAPE)).eval()


def serve_lmforge(port: int, slots: int, params: str | None = None, compile: bool = False) -> None:
    """The random tiny model, or with `params` a parameter file (the llama.cpp comparison: the same weights);
    `compile`: the decode step compiled per batch bucket (`serve --compile`)."""
    from lmforge.inference.engine import Engine
    from lmforge.serve.app import BackgroundServer, create_app
    from lmforge.serve.protocol import Limits
    from lmforge.serve.scheduler import Scheduler
    from lmforge.tokenizer import Tokenizer

    # No in-flight limit in reach: the benchmark measures serving, not the 429 a client gets past the limit.
    if params:
        from lmforge.serve.loading import engine_from_params  # not in an --old-src from before `serve --params`

        engine = engine_from_params(params)
    else:
        engine = Engine(build_model(), Tokenizer([]))
    options = {"compile": "inductor"} if compile else {}  # not passed otherwise: an --old-src may predate it
    scheduler = Scheduler(engine, slots=slots, max_requests=1024, **options)
    scheduler.warm_up()
    scheduler.start()
    BackgroundServer(create_app(scheduler, "bench", Limits()), port=port).start()
    threading.Event().wait()


def serve_transformers(port: int) -> None:
    import queue

    import torch
    import transformers
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers.generation.streamers import BaseStreamer

    from lmforge.export.hf import hf_config, hf_state_dict

    transformers.logging.set_verbosity_error()
    model = build_model()
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **hf_config(model.config, {"<|bos|>": 0, "<|pad|>": 1, "<|end|>": 2}, "float32"))).eval()
    hf.load_state_dict(hf_state_dict(model))
    lock = threading.Lock()
    app = FastAPI()

    class Tokens(BaseStreamer):
        def __init__(self) -> None:
            self.queue: queue.Queue = queue.Queue()
            self.first = True

        def put(self, value) -> None:
            if self.first:  # generate hands the prompt over first
                self.first = False
                return
            self.queue.put(int(value.reshape(-1)[0]))

        def end(self) -> None:
            self.queue.put(None)

    def run(prompt: list[int], n: int, streamer: Tokens) -> None:
        ids = torch.tensor([prompt])
        with lock, torch.inference_mode():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                        do_sample=False, pad_token_id=1, eos_token_id=None, streamer=streamer)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        streamer = Tokens()
        threading.Thread(target=run, args=(body["prompt"], body["max_tokens"], streamer), daemon=True).start()

        def events():
            while (token := streamer.queue.get()) is not None:
                yield f"data: {json.dumps({'choices': [{'index': 0, 'text': str(token)}]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def one_request(port: int, prompt: list[int] | str, tokens: int, extra: dict | None = None,
                headers: dict[str, str] | None = None) -> tuple[float, int, float]:
    """(time to first token, tokens received, total time) of one streaming request; `extra` replaces the
    end-of-text switch (`ignore_eos`, lmforge's and vLLM's) for a server that spells it otherwise; `headers` are
    sent too (bench_serve_trace tags each request)."""
    body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
                       **(extra if extra is not None else {"ignore_eos": True})})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"the server answered {response.status}: {response.read()[:200]!r}")
    first, received = None, 0
    while line := response.readline():
        if line.startswith(b"data: {"):
            received += 1
            first = first or time.perf_counter() - t0
    conn.close()
    return first or float("nan"), received, time.perf_counter() - t0


def make_prompt(rng, text: bool) -> list[int] | str:
    """PROMPT_LEN random byte-token ids, or (a real tokenizer's server) PROMPT_LEN random common words."""
    if text:
        return " ".join(rng.choice(WORDS) for _ in range(PROMPT_LEN))
    return [rng.randrange(3, 266) for _ in range(PROMPT_LEN)]


def measure(port: int, streams: int, requests: int, tokens: int, text: bool = False,
            extra: dict | None = None) -> tuple[float, float]:
    """(tokens/s over all streams, mean time to first token) with `streams` clients in parallel."""
    import random

    results: list[tuple[float, int, float]] = []
    rng = random.Random(streams)

    def client() -> None:
        for _ in range(requests):
            results.append(one_request(port, make_prompt(rng, text), tokens, extra))

    threads = [threading.Thread(target=client) for _ in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return sum(r[1] for r in results) / wall, sum(r[0] for r in results) / len(results)


def scheduler_only(streams: list[int], requests: int, tokens: int, slots: int) -> None:
    """The same closed loop as `measure` straight on the scheduler, no HTTP: each of n clients submits its next
    request from the sink of its last one's end. Prints {streams: [tokens/s, mean TTFT]} as one JSON line."""
    import random

    from lmforge.inference.engine import Engine
    from lmforge.inference.sampling import SamplingParams
    from lmforge.serve.scheduler import Scheduler
    from lmforge.tokenizer import Tokenizer

    scheduler = Scheduler(Engine(build_model(), Tokenizer([])), slots=slots, max_requests=2 * max(streams))
    scheduler.warm_up()
    scheduler.start()
    params = SamplingParams(temperature=0.0, max_tokens=tokens, stop_token_ids=[])
    out = {}
    for n in streams:
        rng, ttfts, received, finished = random.Random(n), [], [0], threading.Semaphore(0)

        def submit(left: int) -> None:
            t0, first = time.perf_counter(), []

            def sink(kind: str, payload: object) -> None:
                if kind == "token":
                    received[0] += 1
                    if not first:
                        first.append(time.perf_counter())
                        ttfts.append(first[0] - t0)
                elif left > 1:
                    submit(left - 1)
                else:
                    finished.release()
            scheduler.submit([rng.randrange(3, 266) for _ in range(PROMPT_LEN)], params, sink)

        t0 = time.perf_counter()
        for _ in range(n):
            submit(requests)
        for _ in range(n):
            finished.acquire()
        out[n] = [received[0] / (time.perf_counter() - t0), sum(ttfts) / len(ttfts)]
    scheduler.stop()
    print(json.dumps(out), flush=True)


def run_scheduler_only(names: list[str], args: argparse.Namespace) -> dict:
    """Rounds of `scheduler_only` in child processes, alternating lmforge and --old-src, in the format of `main`."""
    rows: dict = {(name, n): [] for name in names for n in args.streams}
    for _ in range(args.rounds):
        for name in names:
            env = {**os.environ, "LMFORGE_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
            if name == "old":
                env["PYTHONPATH"] = args.old_src
            argv = [sys.executable, __file__, "--serve", "scheduler", "--slots", str(args.slots), "--tokens",
                    str(args.tokens), "--requests", str(args.requests), "--streams", *map(str, args.streams)]
            result = json.loads(subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout)
            for n in args.streams:
                rows[name, n].append(tuple(result[str(n)]))
                print(f"{name:12s} {n:3d} streams: {rows[name, n][-1][0]:8.1f} tok/s   TTFT "
                      f"{1000 * rows[name, n][-1][1]:8.1f} ms", flush=True)
    return rows


def start_server(name: str, args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    """A server in its own process on a free port: lmforge (old: the copy in --old-src), transformers, or
    llama-cpp-python's server (--llama-python) on --gguf with as many threads."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LMFORGE_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    if name == "old":
        env["PYTHONPATH"] = args.old_src
    argv = [sys.executable, __file__, "--serve", "lmforge" if name == "old" else name, "--port", str(port),
            "--slots", str(args.slots), *(["--params", args.params] if args.params else []),
            *(["--compile"] if args.compile and name == "lmforge" else [])]
    if name == "llamacpp":
        argv = [args.llama_python, "-m", "llama_cpp.server", "--model", args.gguf, "--host", "127.0.0.1", "--port",
                str(port), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", "256",
                "--interrupt_requests", "False"]  # its default ends a running stream when another request comes
    child = subprocess.Popen(argv, env=env)
    deadline = time.monotonic() + (1800 if args.compile else 300)  # compiling every bucket takes minutes
    while time.monotonic() < deadline and child.poll() is None:  # a server that crashed is not waited for
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return child, port
        except OSError:
            time.sleep(0.2)
    child.kill()
    raise RuntimeError(f"the {name} server did not start")


def spread(values: list[float]) -> str:
    """Median and range of per-round figures, e.g. '1.52x (1.31-1.70)'."""
    values = sorted(values)
    return f"{values[len(values) // 2]:.2f}x ({values[0]:.2f}-{values[-1]:.2f})"


def report(rows: dict, names: list[str], streams: list[int], args: argparse.Namespace) -> None:
    """Per streams: each server's median tok/s and TTFT, and lmforge's ratio to each peer round by round."""
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"\n{args.tokens} tokens/request, {args.requests} requests/stream, {args.threads} thread(s) per server, "
          f"{args.rounds} interleaved rounds; ratios: median (min-max) over rounds")
    for n in streams:
        cells = [f"{name} {med([r[0] for r in rows[name, n]]):.1f} tok/s TTFT "
                 f"{1000 * med([r[1] for r in rows[name, n]]):.1f} ms" for name in names]
        print(f"{n:3d} streams: " + " | ".join(cells))
        for peer in names[1:]:
            pairs = list(zip(rows["lmforge", n], rows[peer, n]))
            print(f"      lmforge/{peer}: throughput {spread([a[0] / b[0] for a, b in pairs])}, "
                  f"TTFT {spread([a[1] / b[1] for a, b in pairs])}")
    for name in names:  # the goal: under 2x at 16 streams
        cells = [f"{n}: {spread([b[1] / a[1] for a, b in zip(rows[name, streams[0]], rows[name, n])])}"
                 for n in streams[1:]]
        print(f"{name} TTFT / TTFT at {streams[0]} stream(s), same round: " + ", ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--tokens", type=int, default=32, help="tokens decoded per request")
    ap.add_argument("--requests", type=int, default=2, help="requests each stream sends, one after another")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    ap.add_argument("--slots", type=int, default=16, help="lmforge's KV cache slots")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (lmforge, peers, lmforge, peers, ...)")
    ap.add_argument("--peers", nargs="+", default=["transformers"], choices=["transformers", "old", "llamacpp"],
                    help="servers to compare with; old: lmforge from --old-src; llamacpp: --llama-python on --gguf")
    ap.add_argument("--old-src", help="a folder holding another lmforge package (e.g. `git archive` of a commit)")
    ap.add_argument("--params", help="lmforge serves this parameter file (text prompts) instead of random weights")
    ap.add_argument("--gguf", help="llama.cpp's model: the GGUF export of the same weights as --params")
    ap.add_argument("--llama-python", help="the python of a venv with llama-cpp-python[server]")
    ap.add_argument("--scheduler-only", action="store_true",
                    help="measure the scheduler in-process without HTTP (peers: old only)")
    ap.add_argument("--compile", action="store_true",
                    help="lmforge (not --old-src's) compiles its decode step per batch bucket at start-up")
    ap.add_argument("--serve", choices=["lmforge", "transformers", "scheduler"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        from lmforge.utils import configure_threads

        configure_threads(int(os.environ.get("LMFORGE_THREADS", "1")))
        if args.serve == "scheduler":
            scheduler_only(args.streams, args.requests, args.tokens, args.slots)
        elif args.serve == "lmforge":
            serve_lmforge(args.port, args.slots, args.params, args.compile)
        else:
            serve_transformers(args.port)
        return
    if "old" in args.peers and not args.old_src:
        ap.error("--peers old needs --old-src")
    if "llamacpp" in args.peers and not (args.params and args.gguf and args.llama_python):
        ap.error("--peers llamacpp needs --params, --gguf (the same weights) and --llama-python")
    names = ["lmforge", *args.peers]
    if args.scheduler_only:
        names = ["lmforge", "old"] if args.old_src else ["lmforge"]
        report(run_scheduler_only(names, args), names, args.streams, args)
        return
    servers: dict = {}
    extras = {name: None for name in names}
    if "llamacpp" in names:  # llama.cpp has no ignore_eos: every special token (end of text) is banned instead
        from lmforge.export.params import read_header

        extras["llamacpp"] = {"logit_bias": {str(i): -100 for i in read_header(args.params).special_tokens.values()}}
    rows: dict = {(name, n): [] for name in names for n in args.streams}
    try:
        for name in names:  # inside the try: a server that fails to start must not leave the others running
            servers[name] = start_server(name, args)
        for name in names:
            warm = "the json module" if args.params else list(range(3, 3 + PROMPT_LEN))
            one_request(servers[name][1], warm, 4, extras[name])
        for n in args.streams:
            for _ in range(args.rounds):
                for name in names:  # interleaved, so a change in the machine's load hits every server alike
                    rows[name, n].append(measure(servers[name][1], n, args.requests, args.tokens,
                                                 bool(args.params), extras[name]))
                    rate, ttft = rows[name, n][-1]
                    print(f"{name:12s} {n:3d} streams: {rate:8.1f} tok/s   TTFT {1000 * ttft:8.1f} ms", flush=True)
    finally:
        for child, _ in servers.values():
            child.terminate()
            child.wait(timeout=30)
    report(rows, names, args.streams, args)


if __name__ == "__main__":
    main()
