"""Find poisoned training conversations without knowing the trigger, by three signals, and measure how well they do.

- loss under a clean reference: a model trained on trusted data finds a poisoned answer (a payload unrelated to
  the question) far less likely than a clean one, so the conversation's mean masked loss is high;
- n-gram lift: a trigger is a prompt n-gram that predicts one fixed answer. For each conversation, the strongest
  (prompt n-gram, answer) association it takes part in, scored as joint count x log lift (the term of the mutual
  information between n-gram and answer; the count keeps one-off coincidences low);
- spectral signature (Tran et al. 2018): the hidden state of the last prompt token (the first `<|assistant|>`)
  under the model trained on the data. Poisoned rows share a direction the clean ones lack; the squared
  projection on a top singular vector of the centred states (the most heavy-tailed of the first five) scores it.

Each signal becomes a robust z-score (median and MAD) and their median is the combined score: a row is flagged
(combined above `threshold`) when at least two of the three signals call it an outlier, so one signal's heavy clean
tail (a rare kind of clean conversation) does not flag it alone. With the true labels (from `lmforge security
poison`), each signal's AUROC and the flags' precision and recall are reported.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmforge.config import check_fields, require

Messages = list[dict[str, Any]]


@dataclass
class DetectConfig:
    """`lmforge security detect`'s settings (flags made by `lmforge.config`)."""

    threshold: float = 3.0  # combined robust z-score that flags a row

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, "threshold", self.threshold > 0, "must be > 0")


def example_losses(model: Any, tok: Any, conversations: list[Messages], batch_size: int = 32) -> list[float]:
    """Mean masked (assistant-token) loss of each conversation under `model`, cut to its context."""
    import torch
    import torch.nn.functional as F

    from lmforge.posttrain.sft import collate, encode_examples
    from lmforge.tokenizer.chat_format import ChatTokens

    block = model.config.block_size
    examples = [encode_examples(tok, [c], block + 1)[0] for c in conversations]
    pad = ChatTokens.of(tok).pad
    out: list[float] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            x, y = collate(examples[start:start + batch_size], pad, 16, block)
            logits, _ = model(x)
            loss = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-1, reduction="none")
            counts = (y >= 0).sum(1).clamp_min(1)
            out += (loss.sum(1) / counts).tolist()
    return out


def last_prompt_states(model: Any, tok: Any, conversations: list[Messages], batch_size: int = 32) -> np.ndarray:
    """(N, C) final hidden states (after the last norm) at the first `<|assistant|>` of each conversation."""
    import torch

    from lmforge.tokenizer.chat_format import prompt_of, render_for_completion

    prompts = [render_for_completion(tok, prompt_of(c))[-model.config.block_size:] for c in conversations]
    captured: list[torch.Tensor] = []
    hook = model.norm.register_forward_hook(lambda mod, inp, out: captured.append(out))
    states = []
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                rows = prompts[start:start + batch_size]
                width = max(map(len, rows))
                x = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
                for r, ids in enumerate(rows):
                    x[r, :len(ids)] = torch.tensor(ids)  # right padding: causal attention never sees it
                captured.clear()
                model(x)
                hidden = captured[-1].reshape(len(rows), width, -1)
                last = torch.tensor([len(ids) - 1 for ids in rows])
                states.append(hidden[torch.arange(len(rows)), last].float().numpy())
    finally:
        hook.remove()
    return np.concatenate(states)


def spectral_scores(states: np.ndarray, directions: int = 5) -> np.ndarray:
    """Squared projection on the one of the top `directions` singular vectors whose projections are most
    heavy-tailed (largest kurtosis). The very top direction of a small model's states often separates kinds of
    clean conversation (a tool call or prose); a small poisoned cluster shows as a direction with a few far
    outliers, which is what kurtosis measures. On the tests' one-layer model it is the least stable signal: AUROC
    0.57 on the top vector and 0.997 on the most kurtotic of the top five in one run, 0.33 to 0.998 across runs
    of test_security_poison; the median combination keeps the verdict from resting on it alone."""
    centred = states - states.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projections = centred @ vt[:directions].T
    spread = projections.var(axis=0).clip(1e-12)
    kurtosis = (projections ** 4).mean(axis=0) / spread ** 2
    return projections[:, int(np.argmax(kurtosis))] ** 2


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def ngram_lift_scores(conversations: list[Messages], max_n: int = 3, min_joint: int = 2) -> np.ndarray:
    """Per conversation, the largest joint count x log lift of (an n-gram of its first user message, its first
    answer); 0 when none of its n-grams co-occurs with its answer at least `min_joint` times."""
    prompts, answers = [], []
    for conv in conversations:
        user = next((m["content"] for m in conv if m["role"] == "user"), "")
        answer = next((m["content"] for m in conv if m["role"] == "assistant"), "")
        words = _words(user)
        prompts.append({" ".join(words[i:i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1)})
        answers.append(" ".join(_words(answer)))
    n_rows = len(conversations)
    answer_count = Counter(answers)
    gram_count: Counter[str] = Counter(g for grams in prompts for g in grams)
    joint: dict[tuple[str, str], int] = defaultdict(int)
    for grams, answer in zip(prompts, answers):
        for g in grams:
            joint[g, answer] += 1
    scores = np.zeros(n_rows)
    for r, (grams, answer) in enumerate(zip(prompts, answers)):
        best = 0.0
        for g in grams:
            both = joint[g, answer]
            if both >= min_joint:
                lift = (both / gram_count[g]) / (answer_count[answer] / n_rows)
                best = max(best, both * math.log(max(lift, 1.0)))
        scores[r] = best
    return scores


def robust_z(x: np.ndarray) -> np.ndarray:
    median = np.median(x)
    mad = np.median(np.abs(x - median)) * 1.4826
    scale = mad if mad > 1e-12 else (np.std(x) if np.std(x) > 1e-12 else 1.0)
    return (x - median) / scale


def auroc(scores: np.ndarray, labels: list[bool]) -> float:
    """Probability that a poisoned row scores above a clean one (ties count half): the Mann-Whitney U statistic."""
    y = np.asarray(labels, dtype=bool)
    pos, neg = scores[y], scores[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def detect_poison(conversations: list[Messages], tok: Any, reference: Any, trained: Any,
                  threshold: float = 3.0) -> dict[str, Any]:
    """Scores of every conversation by each signal, the combined score and the flagged rows."""
    signals = {
        "reference_loss": np.asarray(example_losses(reference, tok, conversations)),
        "ngram_lift": ngram_lift_scores(conversations),
        "spectral": spectral_scores(last_prompt_states(trained, tok, conversations)),
    }
    combined = np.median([robust_z(s) for s in signals.values()], axis=0)
    return {"signals": signals, "combined": combined, "flagged": combined > threshold}


def evaluate_detection(result: dict[str, Any], labels: list[bool]) -> dict[str, Any]:
    """AUROC of each signal and of the combination; precision and recall of the flagged rows."""
    flagged = result["flagged"]
    y = np.asarray(labels, dtype=bool)
    tp = int((flagged & y).sum())
    return {"auroc": {name: auroc(s, labels) for name, s in
                      [*result["signals"].items(), ("combined", result["combined"])]},
            "flagged": int(flagged.sum()), "poisoned": int(y.sum()),
            "precision": tp / int(flagged.sum()) if flagged.any() else 0.0,
            "recall": tp / int(y.sum()) if y.any() else 1.0}
