"""Serving throughput and time to first token: `lmforge serve`'s scheduler against a plain FastAPI loop over
Hugging Face transformers' `generate`, on the same random weights, at 1, 4 and 16 concurrent streams (CPU).

Each server runs in its own process (this script with `--serve NAME`), so neither competes with the clients for the
GIL. The peer is what a first server usually is: one FastAPI route that runs `model.generate` (fp32, KV cache,
SDPA) for one request at a time under a lock, streaming each token as a server-sent event through a streamer.
Both decode exactly `--tokens` tokens per request (`ignore_eos`; the peer has no end token), greedy, from the same
16-token prompts (token ids). Each of C clients sends `--requests` requests one after another over streaming HTTP;
throughput is all tokens received / wall time, TTFT is the mean time from sending to the first token.
llama.cpp's server (llama-cpp-python) is not compared: it builds from source here.

    .venv/bin/python benchmarks/bench_serve.py [--streams 1 4 16] [--tokens 32] [--threads 1]
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


def build_model():
    import torch

    from lmforge.model import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(**SHAPE)).eval()


def serve_lmforge(port: int, slots: int) -> None:
    from lmforge.inference.engine import Engine
    from lmforge.serve.app import BackgroundServer, create_app
    from lmforge.serve.protocol import Limits
    from lmforge.serve.scheduler import Scheduler
    from lmforge.tokenizer import Tokenizer

    scheduler = Scheduler(Engine(build_model(), Tokenizer([])), slots=slots)
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


def one_request(port: int, prompt: list[int], tokens: int) -> tuple[float, int, float]:
    """(time to first token, tokens received, total time) of one streaming request."""
    body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
                       "ignore_eos": True})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    first, received = None, 0
    while line := response.readline():
        if line.startswith(b"data: {"):
            received += 1
            first = first or time.perf_counter() - t0
    conn.close()
    return first or float("nan"), received, time.perf_counter() - t0


def measure(port: int, streams: int, requests: int, tokens: int) -> tuple[float, float]:
    """(tokens/s over all streams, mean time to first token) with `streams` clients in parallel."""
    import random

    results: list[tuple[float, int, float]] = []
    rng = random.Random(streams)

    def client() -> None:
        for _ in range(requests):
            results.append(one_request(port, [rng.randrange(3, 266) for _ in range(PROMPT_LEN)], tokens))

    threads = [threading.Thread(target=client) for _ in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return sum(r[1] for r in results) / wall, sum(r[0] for r in results) / len(results)


def start_server(name: str, threads: int, slots: int) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LMFORGE_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    child = subprocess.Popen([sys.executable, __file__, "--serve", name, "--port", str(port), "--slots", str(slots)],
                             env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return child, port
        except OSError:
            time.sleep(0.2)
    child.kill()
    raise RuntimeError(f"the {name} server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--tokens", type=int, default=32, help="tokens decoded per request")
    ap.add_argument("--requests", type=int, default=2, help="requests each stream sends, one after another")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    ap.add_argument("--slots", type=int, default=16, help="lmforge's KV cache slots")
    ap.add_argument("--serve", choices=["lmforge", "transformers"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        from lmforge.utils import configure_threads

        configure_threads(int(os.environ.get("LMFORGE_THREADS", "1")))
        serve_lmforge(args.port, args.slots) if args.serve == "lmforge" else serve_transformers(args.port)
        return
    rows = {}
    for name in ("lmforge", "transformers"):
        child, port = start_server(name, args.threads, args.slots)
        try:
            one_request(port, list(range(3, 3 + PROMPT_LEN)), 4)  # warm up
            for streams in args.streams:
                rows[name, streams] = measure(port, streams, args.requests, args.tokens)
                rate, ttft = rows[name, streams]
                print(f"{name:12s} {streams:3d} streams: {rate:8.1f} tok/s   TTFT {1000 * ttft:8.1f} ms", flush=True)
        finally:
            child.terminate()
            child.wait(timeout=30)
    print(f"\n{'streams':>7s} {'lmforge tok/s':>14s} {'hf tok/s':>9s} {'ratio':>6s} {'lmforge TTFT':>13s} "
          f"{'hf TTFT':>9s}  ({args.tokens} tokens/request, {args.threads} thread(s) per server)")
    for streams in args.streams:
        (a, ta), (b, tb) = rows["lmforge", streams], rows["transformers", streams]
        print(f"{streams:7d} {a:14.1f} {b:9.1f} {a / b:5.2f}x {1000 * ta:11.1f}ms {1000 * tb:7.1f}ms")
    first = args.streams[0]
    print(f"lmforge TTFT at {args.streams[-1]} streams / at {first}: "
          f"{rows['lmforge', args.streams[-1]][1] / rows['lmforge', first][1]:.2f}x")


if __name__ == "__main__":
    main()
