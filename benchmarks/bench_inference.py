"""Decode speed of the lmforge engine against Hugging Face transformers `generate` on the same weights.

The weights are random (speed does not depend on them) and exported to `LlamaForCausalLM` through the same
renaming `lmforge export hf` uses, so both sides run the same model in fp32 with a KV cache. Decode tokens/s is
measured as (N - 1) / (time to generate N tokens - time to generate 1), which takes the prefill out; each figure
is the best of a few runs, run side by side so load on the machine hits both alike.

Fairness: one process, so both run fp32 on the same torch thread count; both decode exactly N tokens (no end token,
`min_new_tokens`); transformers runs its default DynamicCache with SDPA attention, its fastest setting here: on the
tiny shape, 1 thread, its static cache (`cache_implementation="static"`, uncompiled) gave 172 against 377 tok/s at
batch 1 and 1,330 against 1,990 at batch 8, and eager attention 228 and 1,200 (measured side by side, load ~2).

    .venv/bin/python benchmarks/bench_inference.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHAPES = {
    # name: (GPTConfig overrides, tokens to decode)
    "tiny (4L 128d, 2.4M)": (dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=4096), 128),
    "small (6L 384d, 17M)": (dict(n_layer=6, n_head=6, n_embd=384, block_size=512, vocab_size=8192), 96),
    "100M (12L 768d)": (dict(n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=8192), 48),
}


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shape only, fewer tokens")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both engines (default 1)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from lmforge.utils import configure_threads

    threads = configure_threads(args.threads)
    import torch
    import transformers

    from lmforge.export.hf import hf_config, hf_state_dict
    from lmforge.inference.engine import Engine
    from lmforge.inference.sampling import SamplingParams
    from lmforge.model import GPT, GPTConfig

    transformers.logging.set_verbosity_error()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {threads} thread(s); "
          f"greedy decode, fp32, prompt 16 tokens")
    shapes = dict(list(SHAPES.items())[:1]) if args.quick else SHAPES
    rows = []
    for name, (overrides, n_tokens) in shapes.items():
        if args.quick:
            n_tokens = 64
        torch.manual_seed(0)
        model = GPT(GPTConfig(**overrides)).eval()
        specials = {"<|bos|>": 0, "<|pad|>": 1, "<|end|>": 2}
        cfg = hf_config(model.config, specials, "float32")
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
        hf.load_state_dict(hf_state_dict(model), strict=not model.config.tie_embeddings)
        engine = Engine(model)
        for batch in (1, 8):
            prompts = torch.randint(3, model.config.vocab_size, (batch, 16))

            def ours(n: int) -> list[list[int]]:
                params = SamplingParams(temperature=0, max_tokens=n, stop_token_ids=[])
                out = engine.generate(prompts.tolist(), params)
                return [o[0].token_ids for o in out]

            def theirs(n: int) -> list[list[int]]:
                with torch.inference_mode():
                    out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                                      min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=1,
                                      eos_token_id=None)
                return out[:, prompts.size(1):].tolist()

            assert ours(8) == theirs(8), "the engines disagree on greedy tokens"
            t_n = {"lmforge": float("inf"), "transformers": float("inf")}
            t_1 = dict(t_n)
            for _ in range(args.repeats):  # interleaved, so a burst of load on the machine hits both
                for label, fn in (("lmforge", ours), ("transformers", theirs)):
                    t_n[label] = min(t_n[label], best_time(lambda: fn(n_tokens), 1))
                    t_1[label] = min(t_1[label], best_time(lambda: fn(1), 1))
            rate = {k: batch * (n_tokens - 1) / max(t_n[k] - t_1[k], 1e-9) for k in t_n}
            ratio = rate["lmforge"] / rate["transformers"]
            rows.append((name, batch, rate["lmforge"], rate["transformers"], ratio))
            print(f"{name:22s} batch {batch}: lmforge {rate['lmforge']:8.1f} tok/s   transformers "
                  f"{rate['transformers']:8.1f} tok/s   ratio {ratio:.2f}x", flush=True)
    print("\nsummary (decode tokens/s, all rows of the batch counted):")
    print(f"{'shape':22s} {'batch':>5s} {'lmforge':>10s} {'transformers':>13s} {'ratio':>7s}")
    for name, batch, a, b, r in rows:
        print(f"{name:22s} {batch:5d} {a:10.1f} {b:13.1f} {r:6.2f}x")


if __name__ == "__main__":
    main()
