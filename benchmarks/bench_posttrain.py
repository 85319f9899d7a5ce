"""Post-training speed: SFT training tokens/s against Hugging Face transformers, and the tool loop's overheads.

1. SFT step: the same batches of default SFT conversations (one per row, length-grouped, padded, targets -1 outside
   the assistant's tokens), the same weights (copied into a `LlamaForCausalLM` through the mapping `lmforge export
   hf` uses), the same masked loss (summed cross-entropy over targets != -1, computed from each model's logits),
   AdamW on both, fp32. Tokens/s counts real (non-padding) tokens. The first losses must agree (same model).
2. Calculator: our `ast`-walking calculator against Python's `eval` (unsafe, the fastest thing possible) on the
   same expressions, microseconds per call.
3. Tool output in the chat loop: appending a tool's output into the live KV cache (`session.append`, what
   `ChatSession` does) against re-rendering and re-prefilling the whole conversation (what a stateless loop does).
4. Python runner: wall time of one sandboxed call (process start, limits, audit hook).

    .venv/bin/python benchmarks/bench_posttrain.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHAPES = {
    "tiny (4L 128d)": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
    "small (6L 384d)": dict(n_layer=6, n_head=6, n_embd=384, block_size=512),
}


def sft_step_bench(shape: dict, vocab: int, batches: list, steps: int, warmup: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    import transformers

    from lmforge.export.hf import hf_config, hf_state_dict
    from lmforge.model import GPT, GPTConfig

    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=vocab, **shape))
    cfg = hf_config(ours.config, {"<|bos|>": 0, "<|pad|>": 1, "<|end|>": 2}, "float32")
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    theirs.load_state_dict(hf_state_dict(ours), strict=not ours.config.tie_embeddings)
    theirs.config.use_cache = False

    def masked_loss(logits, y):
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-1,
                               reduction="sum") / (y >= 0).sum()

    sides = {"ours": (ours, lambda x: ours(x)[0]), "hf": (theirs, lambda x: theirs(input_ids=x).logits)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), foreach=True) for k, (m, _) in sides.items()}
    seconds = {k: 0.0 for k in sides}
    first: dict[str, float] = {}
    tokens = 0
    for m, _ in sides.values():
        m.train()
    # Step by step, alternating which side goes first, so that load on the machine hits both alike.
    for i, (x, y) in enumerate(batches[:warmup + steps]):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        for key in order:
            model, forward = sides[key]
            t0 = time.perf_counter()
            loss = masked_loss(forward(x), y)
            loss.backward()
            opts[key].step()
            opts[key].zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            first.setdefault(key, float(loss.detach()))
            if i >= warmup:
                seconds[key] += dt
        if i >= warmup:
            tokens += int((x != 1).sum())  # real tokens (pad id is 1 here)
    return {"ours": tokens / seconds["ours"], "hf": tokens / seconds["hf"], "first_loss": (first["ours"], first["hf"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shape, fewer steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1)")
    args = ap.parse_args()

    from lmforge.utils import configure_threads

    threads = configure_threads(args.threads)
    import torch
    import transformers

    from lmforge.inference.engine import Engine
    from lmforge.inference.sampling import SamplingParams
    from lmforge.inference.tools import calculate, run_python
    from lmforge.model import GPT, GPTConfig
    from lmforge.tokenizer.chat_format import ChatTokens, render_for_completion
    from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations, heldout_arithmetic
    from lmforge.posttrain.sft import SFTBatches, encode_examples
    from lmforge.tokenizer import Tokenizer

    transformers.logging.set_verbosity_error()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {threads} thread(s), fp32")
    convs = list(generate_default_conversations(DefaultDataConfig(n=600 if args.quick else 2000, seed=1)))
    tok = Tokenizer.train([m["content"] for c in convs for m in c], 1024)
    pad = ChatTokens.of(tok).pad

    # 1. SFT step speed
    steps, warmup = (10, 2) if args.quick else (40, 3)
    shapes = dict(list(SHAPES.items())[:1]) if args.quick else SHAPES
    print("\n1. SFT training step (forward + masked loss + backward + AdamW), real tokens/s")
    for name, shape in shapes.items():
        ex = encode_examples(tok, convs, shape["block_size"] + 1)
        # remap the pad id to 1 so both models see the same ids (HF's config uses pad 1 here)
        ex = [([1 if i == pad else i for i in ids], m) for ids, m in ex]
        src = SFTBatches(ex, 16, 1, seed=0)
        batches = [src.next_batch() for _ in range(warmup + steps)]
        r = sft_step_bench(shape, tok.vocab_size, batches, steps, warmup)
        print(f"   {name:16s} lmforge {r['ours']:9,.0f} tok/s   transformers {r['hf']:9,.0f} tok/s   "
              f"ratio {r['ours'] / r['hf']:.2f}x   (first loss {r['first_loss'][0]:.4f} vs {r['first_loss'][1]:.4f})")

    # 2. calculator
    exprs = [q["expression"] for q in heldout_arithmetic(500, seed=3)]
    reps = 2 if args.quick else 5
    t_ours = min(_timed(lambda: [calculate(e) for e in exprs]) for _ in range(reps)) / len(exprs)
    t_eval = min(_timed(lambda: [eval(e, {"__builtins__": {}}) for e in exprs]) for _ in range(reps)) / len(exprs)  # noqa: S307 - the unsafe baseline
    print(f"\n2. calculator: {1e6 * t_ours:.1f} us/call (ast walk, bounded) vs eval {1e6 * t_eval:.1f} us/call "
          f"(unsafe): {t_ours / t_eval:.2f}x the time of eval")

    # 3. tool output: append into the KV cache vs re-prefill the conversation
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **SHAPES["tiny (4L 128d)"])).eval()
    engine = Engine(model, tok)
    t = ChatTokens.of(tok)
    history = [m for c in convs[:40] for m in c if m["role"] in ("user", "assistant") and not m.get("tool_calls")]
    history = [m for m in history if m["role"] == "user"][:1] + history[1:]
    prompt = render_for_completion(tok, _alternate(history))[-180:]
    output = [t.tool_output, *tok.encode("0.621371 * 20 = 12.42742"), t.tool_output_end]
    params = SamplingParams(temperature=0, max_tokens=1, stop_token_ids=[])
    appends, prefills = [], []
    for _ in range(5 if args.quick else 20):
        s = engine.session(prompt, params)
        s.step()
        t0 = time.perf_counter()
        s.append(output)
        s.step()
        appends.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        s2 = engine.session(prompt + output, params)
        s2.step()
        prefills.append(time.perf_counter() - t0)
    a, p = statistics.median(appends), statistics.median(prefills)
    print(f"\n3. tool output into a {len(prompt)}-token conversation: append to the KV cache {1e3 * a:.2f} ms vs "
          f"re-prefill {1e3 * p:.2f} ms: {p / a:.1f}x faster")

    # 4. python runner
    runs = [_timed(lambda: run_python("print(sum(range(1000)))")) for _ in range(3 if args.quick else 10)]
    print(f"\n4. sandboxed python call (spawn + limits + audit hook): median {1e3 * statistics.median(runs):.0f} ms")


def _alternate(msgs: list[dict]) -> list[dict]:
    """Keep a strictly alternating user/assistant history (what render_for_completion expects for a chat)."""
    out: list[dict] = []
    for m in msgs:
        if not out or out[-1]["role"] != m["role"]:
            out.append(m)
    return out if out[-1]["role"] == "user" else out[:-1]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
