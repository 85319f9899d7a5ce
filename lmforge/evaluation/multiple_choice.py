"""Multiple choice by log-likelihood: which option does the model find most probable after the context?

Each option is scored by the log-probability of its tokens given the context (the context's tokens are only
conditioning). Three scores are reported, each with its accuracy, because each favours something different:
  sum   - the total log-probability: penalises long options, which have more tokens to get wrong;
  token - the mean per option token (length-normalised): tokenizer-dependent;
  byte  - the sum divided by the option's UTF-8 bytes: does not depend on how the text was cut into tokens, which
          keeps models with different tokenizers comparable (the reason the project reports bits per byte).
The aggregate is a CORE-like score (nanochat, after DCLM): per task, the accuracy centred on chance,
(acc - baseline) / (1 - baseline) with baseline the mean of 1/choices, averaged over tasks, with a 95% bootstrap
interval (items resampled within each task).

Tokenisation: the context is `<|bos|>` + encode(context), each option encode(option), encoded separately so every
option is scored from the same context tokens (a context's trailing space moves to the option, as the
lm-evaluation-harness does, so " Paris" stays one token). Contexts too long for the model lose their beginning.

Scoring is batched: every (item, option) sequence of a batch is right-padded to the batch's longest and run in one
forward; with a causal model the padding after a sequence changes none of its logits, and only the positions that
predict an option's tokens are read.

JSONL formats (one object per line; `--format auto` tells them apart by their fields):
  lmforge:   {"context": str, "choices": [str], "answer": int}  - options are appended to the context as given.
  hellaswag: {"ctx": str, "endings": [str], "label": int|str}    - context ctx (or ctx_a + " " + ctx_b), options
             " " + ending (the released HellaSwag JSONL; "activity_label" is ignored).
  arc:       {"question": {"stem": str, "choices": [{"text", "label"}]}, "answerKey": str} (AI2's release) or
             {"question": str, "choices": {"text": [str], "label": [str]}, "answerKey": str} (Hugging Face's);
             context "Question: STEM\\nAnswer:", options " " + text, the answer the choice whose label is answerKey.
  mmlu:      {"question": str, "choices": [str], "answer": int|"A".."D", "subject": str} (Hugging Face cais/mmlu);
             context "Question: QUESTION\\nAnswer:", options " " + choice; the task is named after the subject.
  piqa:      {"goal": str, "sol1": str, "sol2": str, "label": int} (the labels file's value joined in);
             context "Question: GOAL\\nAnswer:", options " " + sol1 and " " + sol2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from lmforge.utils import LmforgeError

NORMALISATIONS = ("sum", "token", "byte")


@dataclass
class MCItem:
    task: str
    context: str
    choices: list[str]
    answer: int


def _question(q: str) -> str:
    return f"Question: {q.strip()}\nAnswer:"


def _from_lmforge(r: dict[str, Any]) -> tuple[str, list[str], Any]:
    return r["context"], list(r["choices"]), r["answer"]


def _from_hellaswag(r: dict[str, Any]) -> tuple[str, list[str], Any]:
    ctx = r["ctx"] if "ctx" in r else f"{r['ctx_a']} {str(r['ctx_b']).capitalize()}"
    return ctx, [" " + str(e) for e in r["endings"]], r["label"]


def _from_arc(r: dict[str, Any]) -> tuple[str, list[str], Any]:
    q = r["question"]
    if isinstance(q, dict):  # AI2's release
        stem, labels, texts = q["stem"], [c["label"] for c in q["choices"]], [c["text"] for c in q["choices"]]
    else:  # Hugging Face's
        stem, labels, texts = q, list(r["choices"]["label"]), list(r["choices"]["text"])
    if r["answerKey"] not in labels:
        raise ValueError(f"answerKey {r['answerKey']!r} is not among the labels {labels}")
    return _question(stem), [" " + str(t) for t in texts], labels.index(r["answerKey"])


def _from_mmlu(r: dict[str, Any]) -> tuple[str, list[str], Any]:
    answer = r["answer"]
    if isinstance(answer, str) and len(answer) == 1 and answer.isalpha():
        answer = ord(answer.upper()) - ord("A")
    return _question(r["question"]), [" " + str(c) for c in r["choices"]], answer


def _from_piqa(r: dict[str, Any]) -> tuple[str, list[str], Any]:
    return _question(r["goal"]), [" " + str(r["sol1"]), " " + str(r["sol2"])], r["label"]


FORMATS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], tuple[str, list[str], Any]]]] = {
    # name: (fields that identify it, reader)
    "lmforge": (("context", "choices", "answer"), _from_lmforge),
    "hellaswag": (("endings", "label"), _from_hellaswag),
    "arc": (("question", "answerKey"), _from_arc),
    "piqa": (("goal", "sol1", "sol2"), _from_piqa),
    "mmlu": (("question", "choices", "answer"), _from_mmlu),
}


def detect_format(record: dict[str, Any], path: Path) -> str:
    for name, (keys, _) in FORMATS.items():
        if all(k in record for k in keys):
            return name
    raise LmforgeError(f"multiple-choice file {path}: line 1 matches no known format (fields {sorted(record)}); "
                       f"see `lmforge eval mc --help` for the fields of {', '.join(FORMATS)}")


def read_items(path: str | Path, fmt: str = "auto", task: str | None = None,
               limit: int | None = None) -> list[MCItem]:
    """The items of a JSONL file in one of FORMATS, checked line by line (a bad line is refused with its number)."""
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise LmforgeError(f"--format {fmt!r}: choose auto or one of {', '.join(FORMATS)}")
    items: list[MCItem] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(items) >= limit:
                break
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                if fmt == "auto":
                    fmt = detect_format(record, path)
                context, choices, answer = FORMATS[fmt][1](record)
                answer = int(answer)
            except LmforgeError:
                raise
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise LmforgeError(f"multiple-choice file {path} line {lineno} ({fmt} format): {e!r}") from e
            if len(choices) < 2 or not 0 <= answer < len(choices) or not all(choices):
                raise LmforgeError(f"multiple-choice file {path} line {lineno}: needs 2 or more non-empty choices "
                                   f"and an answer index among them (got {len(choices)} choices, answer {answer})")
            name = task or (f"mmlu_{record['subject']}" if fmt == "mmlu" and "subject" in record else path.stem)
            items.append(MCItem(name, str(context), [str(c) for c in choices], answer))
    if not items:
        raise LmforgeError(f"multiple-choice file {path} holds no items")
    return items


def encode_pair(tokenizer: Any, context: str, option: str, block_size: int) -> tuple[list[int], list[int]]:
    """(context ids, option ids): <|bos|> + context, the option encoded on its own with the context's trailing
    whitespace moved onto it; the context loses its beginning when both do not fit the model's context."""
    stripped = context.rstrip(" ")
    option = context[len(stripped):] + option
    ctx = [tokenizer.bos_id] + tokenizer.encode(stripped)
    opt = tokenizer.encode(option)
    if len(opt) >= block_size:
        raise LmforgeError(f"a choice of {len(opt)} tokens does not fit the model's context of {block_size}")
    keep = block_size + 1 - len(opt)  # the last token is never fed: block_size inputs predict len(opt) targets
    return ctx[-keep:], opt


def score_sequences(model: Any, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16,
                    device: str = "cpu") -> list[tuple[float, bool]]:
    """(summed log-probability of each option given its context, whether every option token was the argmax);
    one forward per batch of right-padded rows.

    Rows are sorted by length before batching (so a batch pads little) and the scores returned in input order.
    """
    import torch

    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    scores: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = [pairs[i][0] + pairs[i][1] for i in chunk]
        width = max(len(r) for r in rows) - 1
        idx = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            idx[j, :len(r) - 1] = torch.tensor(r[:-1])
        with torch.no_grad():
            logits, _ = model(idx.to(device))
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for j, i in enumerate(chunk):
            ctx, opt = pairs[i]
            at = logprobs[j, len(ctx) - 1:len(ctx) - 1 + len(opt)]
            targets = torch.tensor(opt)
            scores[i] = (float(at[torch.arange(len(opt)), targets].sum()), bool((at.argmax(-1) == targets).all()))
    return scores


def evaluate_items(model: Any, tokenizer: Any, items: list[MCItem], batch_size: int = 16,
                   device: str = "cpu") -> list[dict[str, Any]]:
    """Per item: the three scores of every option, the prediction under each normalisation, and whether it was
    right."""
    block = model.config.block_size
    pairs = [encode_pair(tokenizer, item.context, option, block) for item in items for option in item.choices]
    sums = [total for total, _ in score_sequences(model, pairs, batch_size, device)]
    results = []
    at = 0
    for item in items:
        n = len(item.choices)
        results.append(item_result(item, sums[at:at + n], [len(p[1]) for p in pairs[at:at + n]]))
        at += n
    return results


def item_result(item: MCItem, sums: list[float], tokens: list[int]) -> dict[str, Any]:
    """One item's result row from its options' summed log-probs and scored token counts: the three scores of every
    option and whether each normalisation picks the answer. Shared with `endpoint.evaluate_items_endpoint`, so a
    server's rows are built as a checkpoint's are."""
    s = np.array(sums, dtype=float)
    nbytes = np.array([max(1, len(c.encode("utf-8"))) for c in item.choices])
    scores = {"sum": s, "token": s / np.array(tokens), "byte": s / nbytes}
    return {"task": item.task, "answer": item.answer, "choices": len(item.choices),
            "scores": {k: v.tolist() for k, v in scores.items()},
            "correct": {k: bool(int(np.argmax(v)) == item.answer) for k, v in scores.items()}}


def centred(accuracy: float, baseline: float) -> float:
    return (accuracy - baseline) / (1 - baseline)


def aggregate(results: list[dict[str, Any]], normalisation: str = "byte", samples: int = 1000,
              seed: int = 0) -> dict[str, Any]:
    """Per-task accuracies (every normalisation) and the CORE-like mean centred accuracy under `normalisation`,
    with its 95% bootstrap interval."""
    if normalisation not in NORMALISATIONS:
        raise LmforgeError(f"--normalisation {normalisation!r}: choose {', '.join(NORMALISATIONS)}")
    tasks: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        tasks.setdefault(r["task"], []).append(r)
    table = {}
    for name, rows in tasks.items():
        baseline = float(np.mean([1 / r["choices"] for r in rows]))
        acc = {k: float(np.mean([r["correct"][k] for r in rows])) for k in NORMALISATIONS}
        table[name] = {"items": len(rows), "baseline": baseline, "accuracy": acc,
                       "centred": centred(acc[normalisation], baseline)}
    rng = np.random.default_rng(seed)
    draws = []
    hits = {name: np.array([r["correct"][normalisation] for r in rows], dtype=float) for name, rows in tasks.items()}
    for _ in range(samples):
        draws.append(np.mean([centred(float(h[rng.integers(0, len(h), len(h))].mean()), table[n]["baseline"])
                              for n, h in hits.items()]))
    core = float(np.mean([t["centred"] for t in table.values()]))
    return {"normalisation": normalisation, "tasks": table, "core": core,
            "core_interval": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))],
            "bootstrap_samples": samples}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{'task':<28} {'items':>6} {'chance':>7} {'acc sum':>8} {'acc tok':>8} {'acc byte':>9} "
             f"{'centred':>8}"]
    for name, t in summary["tasks"].items():
        a = t["accuracy"]
        lines.append(f"{name:<28} {t['items']:>6} {t['baseline']:>7.3f} {a['sum']:>8.3f} {a['token']:>8.3f} "
                     f"{a['byte']:>9.3f} {t['centred']:>8.3f}")
    lo, hi = summary["core_interval"]
    lines.append(f"CORE-like score (mean centred accuracy, {summary['normalisation']}-normalised): "
                 f"{summary['core']:.4f}  95% interval [{lo:.4f}, {hi:.4f}] ({summary['bootstrap_samples']} "
                 "bootstrap resamples)")
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint: str | Path | None, items: Iterable[MCItem], batch_size: int = 16,
                        device: str = "cpu", normalisation: str = "byte", samples: int = 1000,
                        seed: int = 0, params: str | Path | None = None) -> dict[str, Any]:
    """Load a checkpoint (or a parameter file, `params`) and its tokenizer, score every item, and aggregate."""
    from lmforge.evaluation.sources import load_source

    source = load_source(Path(checkpoint) if checkpoint is not None else None,
                         Path(params) if params is not None else None, device)
    results = evaluate_items(source.model, source.tokenizer, list(items), batch_size, device)
    summary = aggregate(results, normalisation, samples, seed)
    summary["checkpoint" if checkpoint is not None else "params"] = source.label
    return {"summary": summary, "items": results}
