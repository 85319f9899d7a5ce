"""`serve --compile`: the scheduler's decode step compiled once per batch bucket at start-up, never per request.

A counting dynamo backend (it runs the captured graph as it is, so the tokens must equal the engine's exactly) shows
what was compiled and when; inductor itself would take minutes on the test machine's CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from lmforge.inference.engine import Engine
from lmforge.inference.sampling import SamplingParams
from lmforge.model import GPT, GPTConfig
from lmforge.serve.scheduler import Scheduler
from lmforge.serve.static_step import buckets
from lmforge.tokenizer import Tokenizer


def tiny_model(**arch: Any) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=266, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64, init_std=0.3)
    return GPT(GPTConfig(**{**config, **arch})).eval()


class CountingBackend:
    """A torch.compile backend that records each graph dynamo hands it and runs it unchanged."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        self.graphs.append(gm)
        return gm.forward


def run_all(scheduler: Scheduler, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    """Submit the prompts in two waves (the second joins a running batch) and turn the loop until all finish."""
    events: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    done: list[int] = []

    def sink(i: int):
        return lambda kind, payload: (events[i].append(payload.event.token_id) if kind == "token"
                                      else done.append(i) if kind == "done" else None)

    half = len(prompts) // 2
    for i in range(half):
        scheduler.submit(prompts[i], params, sink(i))
    with torch.inference_mode():
        for _ in range(3):
            scheduler._turn()
        for i in range(half, len(prompts)):
            scheduler.submit(prompts[i], params, sink(i))
        while len(done) < len(prompts):
            scheduler._turn()
    return [events[i] for i in range(len(prompts))]


def test_buckets_cover_every_batch_up_to_the_slots():
    assert buckets(1) == [1]
    assert buckets(6) == [1, 2, 4, 6]
    assert buckets(16) == [1, 2, 4, 8, 16]


def test_compiled_decode_equals_the_engine_and_compiles_only_at_start_up():
    backend = CountingBackend()
    engine = Engine(tiny_model(), Tokenizer([]))
    scheduler = Scheduler(engine, slots=6, compile=backend)
    torch._dynamo.reset()
    scheduler.warm_up()
    assert len(backend.graphs) == len(buckets(6))  # one graph per bucket, all at start-up
    assert set(scheduler._compiled.chosen) == set(buckets(6))  # each timed against the eager step
    scheduler._compiled.chosen = dict.fromkeys(buckets(6), True)  # here every bucket runs compiled
    params = SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=[])
    prompts = [[engine.tokenizer.bos_id, *range(30 + i, 33 + 2 * i)] for i in range(5)]  # lengths 4 to 12
    got = run_all(scheduler, prompts, params)
    assert len(backend.graphs) == len(buckets(6))  # requests of every batch size compiled nothing more
    for tokens, prompt in zip(got, prompts):
        assert tokens == engine.generate(prompt, params)[0][0].token_ids


def test_two_models_in_one_process_each_compile_their_buckets():
    """A second model config once failed with `enable_gqa must be bool, not SymBool` (automatic dynamic shapes
    made head counts symbolic at a recompile); and more graphs than dynamo's recompile limit must not fall back to
    eager unseen (the limit is lowered here so that a few buckets pass it; monkeypatch would delete the setting)."""
    backend = CountingBackend()
    torch._dynamo.reset()
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = 2
    try:
        schedulers = []
        for arch in ({}, {"n_head": 2, "n_kv_head": 2, "n_embd": 32, "qk_norm": True}):
            engine = Engine(tiny_model(**arch), Tokenizer([]))
            scheduler = Scheduler(engine, slots=4, compile=backend)
            scheduler.warm_up()
            scheduler._compiled.chosen = dict.fromkeys(buckets(4), True)
            schedulers.append((scheduler, engine))
        assert len(backend.graphs) == 2 * len(buckets(4))  # 6 graphs, past the limit of 2
        params = SamplingParams(max_tokens=6, temperature=0.0, stop_token_ids=[])
        for scheduler, engine in schedulers:
            prompts = [[engine.tokenizer.bos_id, 40 + i, 41] for i in range(3)]
            for tokens, prompt in zip(run_all(scheduler, prompts, params), prompts):
                assert tokens == engine.generate(prompt, params)[0][0].token_ids
        assert len(backend.graphs) == 2 * len(buckets(4))
    finally:
        torch._dynamo.config.recompile_limit = limit
