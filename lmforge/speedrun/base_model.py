"""The speedrun's base-model stages: `pretrain` (token shards -> GPT), `sample` (what the base model says, and the
base model as Hugging Face and GGUF files) and `export` (the base model's parameter files and the C runner). Every
file of the base model is named `base*`: the model a user takes away is the assistant, exported by the last stage
(`lmforge.speedrun.assistant`) with the same helpers.

"Deep Dive into LLMs" shows a base model as a token simulator: given a prefix it produces a distribution over the
next token, and sampling from it continues the text in the style of the training data. The sample stage prints
that distribution for the first steps of one prompt and samples a few continuations of several prompts.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

from lmforge.speedrun.context import SpeedrunContext
from lmforge.speedrun.settings import (EXPORT_DTYPES, EXPORT_PROMPT, HF_LOGITS_TOLERANCE, PROBABILITY_CANDIDATES,
                                       PROBABILITY_STEPS, SAMPLE_PROMPTS, SAMPLE_TEMPERATURE, SAMPLE_TOP_K,
                                       SAMPLES_PER_PROMPT)
from lmforge.utils import LmforgeError, atomic_write, write_json


def stage_pretrain(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Pretrain the `tiny` GPT on the tokenize stage's shards (Muon + AdamW, linear decay); keep its loss plot,
    metrics and samples in `out/run`. At most 10 minutes on 2 cores (a time budget); the quick run: under a minute.
    Run again, it resumes from the newest checkpoint."""
    from lmforge.train.config import TrainConfig
    from lmforge.train.pretrain import run_pretrain

    shards = ctx.need("tokenize", "shards_dir")
    summary = run_pretrain(shards, out / "run", TrainConfig(**ctx.settings.pretrain, seed=ctx.seed))
    return {key: summary[key] for key in ("run_dir", "checkpoint", "loss", "val_loss", "val_bpb", "step", "tokens",
                                          "tokens_per_s", "mfu", "params", "loss_plot", "samples",
                                          "stopped_early")}


def probability_table(engine: Any, prompt: str, params: Any, steps: int, k: int) -> tuple[str, list[dict]]:
    """The first `steps` sampling steps of one prompt: the k most likely next tokens, their probabilities, and the
    token drawn, as aligned text (the table `generate --show-probs` prints) and as records."""
    from lmforge.inference.cli import probability_header, probability_steps

    tok = engine.tokenizer
    session = engine.session(prompt, params, max_len=len(engine.encode_prompt(prompt)) + steps)
    lines = [f"prompt: {prompt!r}", probability_header(k)]
    records = []
    for step, (line, event, p, cands) in enumerate(islice(probability_steps(session, tok, params, k), steps), 1):
        lines.append(line)
        records.append({"step": step, "token": tok.decode([event.token_id]), "p": round(p, 4),
                        "candidates": [[tok.decode([t]), round(q, 4)] for t, q in cands]})
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


def export_hf_gguf(checkpoint: str | Path, hf_dir: Path, gguf_file: Path, check_ids: list[int]) -> dict[str, Any]:
    """Export the Hugging Face folder and the GGUF file, and check that transformers gives lmforge's logits on
    `check_ids`; returns their part of the stage summary."""
    from lmforge.export.gguf import export_gguf
    from lmforge.export.hf import export_hf

    export_hf(checkpoint, hf_dir)
    export_gguf(checkpoint, gguf_file)
    diff = hf_logits_diff(checkpoint, hf_dir, check_ids)
    if not diff < HF_LOGITS_TOLERANCE:
        raise LmforgeError(f"the Hugging Face export of {checkpoint} disagrees with lmforge: max logit diff {diff:.2e}")
    print(f"exported {hf_dir} (transformers logits match, max diff {diff:.1e}) and {gguf_file}")
    return {"hf_dir": str(hf_dir), "gguf_file": str(gguf_file), "gguf_mb": round(gguf_file.stat().st_size / 1e6, 2),
            "hf_logits_max_abs_diff": diff}


def export_params_files(checkpoint: str | Path, out: Path, prefix: str, chat: bool | None = None
                        ) -> tuple[dict[str, Path], dict[str, int], Path]:
    """The parameter files `PREFIX_fp32.bin` and `PREFIX_int8.bin` (a quarter of the size), and runner/run.c built
    with the system C compiler: (files by dtype, their sizes, the runner). `chat`: recorded as a chat model (None:
    `lmforge export`'s rule, a checkpoint straight from SFT)."""
    from lmforge.export.crunner import build_runner
    from lmforge.export.params import run_export
    from lmforge.utils import human_bytes

    files = {dtype: out / f"{prefix}_{dtype}.bin" for dtype in EXPORT_DTYPES}
    sizes = {dtype: run_export(checkpoint, path, dtype, chat=chat) for dtype, path in files.items()}
    for dtype, size in sizes.items():
        print(f"[export] {files[dtype]}: {human_bytes(size)}")
    return files, sizes, build_runner(out)


def sample_continuations(engine: Any, params: Any) -> tuple[list[dict[str, Any]], list[str], float]:
    """`params.n` continuations of every sample prompt: their records, their text for `samples.txt`, and the
    sampling speed in tokens per second (prefill included)."""
    t0 = time.perf_counter()
    results = engine.generate(SAMPLE_PROMPTS, params)
    seconds = time.perf_counter() - t0
    n_tokens = sum(len(c.token_ids) for outs in results for c in outs)
    samples, lines = [], []
    for prompt, outs in zip(SAMPLE_PROMPTS, results):
        for i, c in enumerate(outs, 1):
            mean_lp = sum(c.raw_logprobs) / max(1, len(c.raw_logprobs))
            samples.append({"prompt": prompt, "sample": i, "text": c.text, "tokens": len(c.token_ids),
                            "finish_reason": c.finish_reason, "mean_logprob": round(mean_lp, 3)})
            lines.append(f"--- {prompt!r} sample {i} ({c.finish_reason}, mean log-prob {mean_lp:.2f})")
            lines.append(prompt + c.text)
    return samples, lines, n_tokens / seconds


def stage_sample(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Sample from the base model: the next-token probabilities of the first steps of one prompt, then a few
    continuations of several prompts (saved in `samples.txt`/`samples.json`); export the Hugging Face folder and
    the GGUF file of the base model into the stage folder (`base_hf/`, `base.gguf`) and check that transformers
    gives the same logits."""
    from lmforge.inference.engine import Engine
    from lmforge.inference.sampling import SamplingParams

    checkpoint = ctx.need("pretrain", "checkpoint")
    engine = Engine.from_checkpoint(str(checkpoint))
    params = SamplingParams(temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K, max_tokens=ctx.settings.sample_tokens,
                            n=SAMPLES_PER_PROMPT, seed=ctx.seed)
    table, steps = probability_table(engine, SAMPLE_PROMPTS[0],
                                     SamplingParams(temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K, seed=ctx.seed),
                                     steps=PROBABILITY_STEPS, k=PROBABILITY_CANDIDATES)
    print(table)
    samples, sample_lines, tokens_per_second = sample_continuations(engine, params)
    print("\n".join(sample_lines))
    with atomic_write(out / "samples.txt") as f:
        f.write("\n".join([table, "", *sample_lines]) + "\n")
    write_json(out / "samples.json", {"params": asdict(params), "first_steps": steps, "samples": samples})

    check_ids = engine.encode_prompt(SAMPLE_PROMPTS[0] + samples[0]["text"])[: engine.model.config.block_size]
    exported = export_hf_gguf(checkpoint, out / "base_hf", out / "base.gguf", check_ids)
    return {
        "samples_file": str(out / "samples.json"),
        "samples": samples,
        "first_steps": steps,
        "sampled_tokens_per_second": round(tokens_per_second, 1),  # prefill included
        **exported,
    }


def stage_export(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """The base model as two files: export the parameter file (`base_fp32.bin`, and `base_int8.bin` at a quarter
    of the size), build runner/run.c with the system C compiler, and let it continue a prompt from each file."""
    from lmforge.export.crunner import run_runner

    files, sizes, binary = export_params_files(ctx.need("pretrain", "checkpoint"), out, "base")
    prompt, steps = EXPORT_PROMPT, ctx.settings.export_steps
    runs = {dtype: run_runner(binary, path, prompt, steps=steps, seed=ctx.seed) for dtype, path in files.items()}
    lines = [f"$ ./{binary.name} {files['fp32'].name} -i {prompt!r} -n {steps} -t 0.8 -p 0.9 -s {ctx.seed}"]
    for dtype, r in runs.items():
        lines += [f"--- {dtype}: prefill {r.prefill_tok_s:.0f} tok/s, decode {r.decode_tok_s:.0f} tok/s", r.text]
    (out / "continuation.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return {"params_file": str(files["fp32"]), "params_file_int8": str(files["int8"]), "runner": str(binary),
            "bytes": sizes, "prompt": prompt, "continuation": runs["fp32"].text,
            "continuation_int8": runs["int8"].text,
            "decode_tok_s": {dtype: r.decode_tok_s for dtype, r in runs.items()},
            "prefill_tok_s": {dtype: r.prefill_tok_s for dtype, r in runs.items()}}
