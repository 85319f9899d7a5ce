"""The speedrun's `sample` stage: what the freshly pretrained base model says, and the model as ecosystem files.

"Deep Dive into LLMs" shows a base model as a token simulator: given a prefix it produces a distribution over the
next token, and sampling from it continues the text in the style of the training data. This stage prints that
distribution for the first steps of one prompt, samples a few continuations of several prompts, saves both, then
exports the Hugging Face folder and the GGUF file and checks that transformers computes the same logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict
import time
from pathlib import Path
from typing import Any

from lmforge.utils import LmforgeError, atomic_write, write_json

PROMPTS = ["The json module", "Return a new", "class ", "This module provides"]


def probability_table(engine: Any, prompt: str, params: Any, steps: int, k: int = 5) -> tuple[str, list[dict]]:
    """The first `steps` sampling steps of one prompt: the k most likely next tokens, their probabilities, and the
    token drawn, as aligned text and as records."""
    from lmforge.inference.cli import format_candidates, token_label

    tok = engine.tokenizer
    session = engine.session(prompt, params, max_len=len(engine.encode_prompt(prompt)) + steps)
    lines = [f"prompt: {prompt!r}", f"step {'token':>16}   p      <- {k} most likely next tokens"]
    records = []
    for step in range(1, steps + 1):
        cands = session.top_candidates(k)
        event = session.step()[0]
        if event is None or event.token_id < 0:
            break
        p = cands[0][1] if params.greedy else math.exp(event.logprob)
        lines.append(f"{step:4d} {token_label(tok, event.token_id)[:16]:>16} {p:6.1%} <- {format_candidates(tok, cands)}")
        records.append({"step": step, "token": tok.decode([event.token_id]), "p": round(p, 4),
                        "candidates": [[tok.decode([t]), round(q, 4)] for t, q in cands]})
        if event.finish_reason is not None:
            break
    lines.append(f"text: {prompt + session.completions()[0].text!r}")
    return "\n".join(lines), records


def hf_logits_diff(checkpoint: str | Path, hf_dir: Path, ids: list[int]) -> float:
    """Max |logit difference| between lmforge and transformers on one sequence (fp32)."""
    import torch
    import transformers

    from lmforge.checkpoint import load_model

    ours, _ = load_model(checkpoint)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()  # fp32, as exported
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()
    x = torch.tensor([ids])
    with torch.no_grad():
        return float((ours(x)[0] - hf(x).logits).abs().max())


def run_sample_stage(checkpoint: str | Path, out: Path, quick: bool = False, seed: int = 1337) -> dict[str, Any]:
    from lmforge.export.gguf import export_gguf
    from lmforge.export.hf import export_hf
    from lmforge.inference.engine import Engine
    from lmforge.inference.sampling import SamplingParams

    engine = Engine.from_checkpoint(str(checkpoint))
    max_tokens = 24 if quick else 48
    params = SamplingParams(temperature=0.8, top_k=50, max_tokens=max_tokens, n=2, seed=seed)
    table, steps = probability_table(engine, PROMPTS[0], SamplingParams(temperature=0.8, top_k=50, seed=seed),
                                     steps=8)
    print(table)

    t0 = time.perf_counter()
    results = engine.generate(PROMPTS, params)
    seconds = time.perf_counter() - t0
    n_tokens = sum(len(c.token_ids) for outs in results for c in outs)
    samples = []
    text_lines = [table, ""]
    for prompt, outs in zip(PROMPTS, results):
        for i, c in enumerate(outs, 1):
            mean_lp = sum(c.raw_logprobs) / max(1, len(c.raw_logprobs))
            samples.append({"prompt": prompt, "sample": i, "text": c.text, "tokens": len(c.token_ids),
                            "finish_reason": c.finish_reason, "mean_logprob": round(mean_lp, 3)})
            text_lines.append(f"--- {prompt!r} sample {i} ({c.finish_reason}, mean log-prob {mean_lp:.2f})")
            text_lines.append(prompt + c.text)
    print("\n".join(text_lines[2:]))
    with atomic_write(out / "samples.txt") as f:
        f.write("\n".join(text_lines) + "\n")
    write_json(out / "samples.json", {"params": asdict(params), "first_steps": steps,
                                      "samples": samples})

    hf_dir = export_hf(checkpoint, out / "hf")
    gguf_file = export_gguf(checkpoint, out / "model.gguf")
    check_ids = engine.encode_prompt(PROMPTS[0] + samples[0]["text"])[: engine.model.config.block_size]
    diff = hf_logits_diff(checkpoint, hf_dir, check_ids)
    if not diff < 1e-3:
        raise LmforgeError(f"the Hugging Face export of {checkpoint} disagrees with lmforge: max logit diff {diff:.2e}")
    print(f"exported {hf_dir} (transformers logits match, max diff {diff:.1e}) and {gguf_file}")
    return {
        "samples_file": str(out / "samples.json"),
        "samples": samples,
        "first_steps": steps,
        "sampled_tokens_per_second": round(n_tokens / seconds, 1),  # prefill included
        "hf_dir": str(hf_dir),
        "gguf_file": str(gguf_file),
        "gguf_mb": round(gguf_file.stat().st_size / 1e6, 2),
        "hf_logits_max_abs_diff": diff,
    }

