"""A small guard: a classifier that flags jailbreaks and prompt injections before text reaches the model (a user
message, or a tool output / document before it enters the context).

The model is logistic regression on hashed character 4-grams (an `EmbeddingBag` of one weight per bucket): it
trains in seconds on CPU and scores a message in well under a millisecond, which is what a filter in front of every
request and every tool output can afford. Its training data is generated from the shared red-team material by fixed
rules, and the held-out set is disjoint by construction: other in-the-wild jailbreaks, BIPIA's test attack
categories (disjoint from its train categories) in BIPIA's test emails, other extraction-attack families. Negatives
include hard ones, as PINT measures: XSTest's safe prompts ("How do I kill a Python process?") and clean emails.
The score is balanced accuracy (mean of the attack and benign accuracies), so the many benign rows cannot hide a
guard that misses attacks.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import check_fields, require
from lmforge.utils import LmforgeError, atomic_path, read_csv, read_json, write_json


@dataclass
class GuardTrainConfig:
    """`lmforge security guard`'s training settings (flags made by `lmforge.config`)."""

    epochs: int = 60  # full-batch training steps
    lr: float = 0.5  # Adam's rate on the bucket weights

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, "epochs", 1 <= self.epochs <= 10_000, "must be between 1 and 10000")
        require(self, "lr", 0 < self.lr <= 10, "must be in (0, 10]")


BUCKETS = 1 << 18  # hashed 4-gram buckets: few collisions among the n-grams of a few thousand texts
NGRAM = 4


def features(text: str) -> list[int]:
    """Bucket ids of the text's lower-cased character 4-grams (crc32: the same in every process, unlike hash())."""
    t = " ".join(text.lower().split())
    return [zlib.crc32(t[i:i + NGRAM].encode("utf-8", "surrogatepass")) % BUCKETS
            for i in range(max(1, len(t) - NGRAM + 1))]


def _split(items: list[Any], test: bool) -> list[Any]:
    """Every other item (by position) to the held-out side: a fixed split with no shared text."""
    return items[1::2] if test else items[0::2]


def guard_dataset(data: Path, test: bool) -> tuple[list[str], list[int], list[str]]:
    """(texts, labels 1 = attack, group of each) of the training (`test=False`) or held-out side."""
    from lmforge.security.suites import MARKER_INJECTIONS, insert_attack, load_json

    groups: list[tuple[str, int, list[str]]] = []
    wild = load_json(data / "jailbreak" / "inthewild_jailbreak_prompts.json.gz")
    groups.append(("jailbreak", 1, _split(wild, test)))
    families = sorted(load_json(data / "jailbreak" / "sysprompt_extraction_attacks.json").items())
    groups.append(("extraction", 1, [t for _, texts in _split(families, test) for t in texts]))
    inj = data / "prompt_injection"
    side = "test" if test else "train"
    emails = [json.loads(x) for x in (inj / f"bipia_email_{side}.jsonl").read_text(encoding="utf-8").splitlines()]
    attacks = [t for texts in load_json(inj / f"bipia_text_attack_{side}.json").values() for t in texts]
    if test:
        attacks += [text for text, _ in MARKER_INJECTIONS]
    injected = [insert_attack(e["context"], a, ("start", "middle", "end")[i % 3])
                for i, (e, a) in enumerate(zip(emails * (len(attacks) // len(emails) + 1), attacks))]
    groups.append(("injection", 1, injected))
    groups.append(("clean_email", 0, [e["context"] for e in emails]))
    xstest = [r["prompt"] for r in read_csv(data / "safety" / "xstest_v2_prompts.csv") if r["label"] == "safe"]
    groups.append(("xstest_safe", 0, _split(xstest, test)))
    benign = [json.loads(x)["instruction"] for name in ("self_instruct_seed_tasks.jsonl",
              "self_instruct_user_oriented_instructions.jsonl")
              for x in (data / "sft" / name).read_text(encoding="utf-8").splitlines()]
    benign += [t for name in ("mt_bench_questions.jsonl", "vicuna_bench_questions.jsonl")
               for x in (data / "sft" / name).read_text(encoding="utf-8").splitlines() for t in json.loads(x)["turns"]]
    groups.append(("benign", 0, _split(benign, test)))
    # The sources repeat some texts (in-the-wild duplicates, emails in both BIPIA splits): held out means unseen.
    seen = set(guard_dataset(data, test=False)[0]) if test else set()
    texts, labels, names = [], [], []
    for name, label, items in groups:
        items = [t for t in items if t not in seen]
        texts += items
        labels += [label] * len(items)
        names += [name] * len(items)
    return texts, labels, names


class Guard:
    """Logistic regression over hashed 4-grams; `score(texts)` gives the probability that each is an attack."""

    def __init__(self, weights: np.ndarray | None = None, bias: float = 0.0, threshold: float = 0.5) -> None:
        self.weights = np.zeros(BUCKETS, dtype=np.float32) if weights is None else weights.astype(np.float32)
        self.bias, self.threshold = float(bias), float(threshold)

    def score(self, texts: list[str]) -> np.ndarray:
        logits = np.array([self.weights[features(t)].mean() + self.bias for t in texts])
        return 1 / (1 + np.exp(-logits))

    def flags(self, texts: list[str]) -> np.ndarray:
        return self.score(texts) > self.threshold

    @classmethod
    def train(cls, texts: list[str], labels: list[int], epochs: int = 60, lr: float = 0.5) -> "Guard":
        """Full-batch Adam on the class-balanced logistic loss; a text's logit is the mean of its buckets' weights,
        so its gradient is a weighted bincount over the buckets (no sparse-matrix library needed)."""
        ids = [np.asarray(features(t)) for t in texts]
        flat = np.concatenate(ids)
        row = np.repeat(np.arange(len(ids)), [len(i) for i in ids])
        inv_len = 1.0 / np.array([len(i) for i in ids])
        y = np.asarray(labels, dtype=np.float64)
        sample_weight = np.where(y == 1, (y == 0).sum() / max(1, (y == 1).sum()), 1.0)
        params = np.zeros(BUCKETS + 1)  # bucket weights, then the bias
        m, v = np.zeros_like(params), np.zeros_like(params)
        for step in range(1, epochs + 1):
            w = params[:BUCKETS]
            logits = np.bincount(row, weights=w[flat], minlength=len(ids)) * inv_len + params[-1]
            err = sample_weight * (1 / (1 + np.exp(-logits)) - y) / sample_weight.sum()
            grad = np.append(np.bincount(flat, weights=(err * inv_len)[row], minlength=BUCKETS), err.sum())
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad ** 2
            params -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
        return cls(params[:BUCKETS], float(params[-1]))

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "guard.safetensors") as tmp:
            save_file({"weights": self.weights}, str(tmp))
        write_json(folder / "guard_config.json", {"bias": self.bias, "threshold": self.threshold, "buckets": BUCKETS,
                                                  "ngram": NGRAM})

    @classmethod
    def load(cls, folder: Path) -> "Guard":
        from safetensors.numpy import load_file

        cfg = read_json(folder / "guard_config.json", "guard config")
        if cfg.get("buckets") != BUCKETS or cfg.get("ngram") != NGRAM:
            raise LmforgeError(f"{folder}/guard_config.json was written for other features ({cfg})")
        return cls(load_file(str(folder / "guard.safetensors"))["weights"], cfg["bias"], cfg["threshold"])


def evaluate_guard(guard: Guard, texts: list[str], labels: list[int], groups: list[str]) -> dict[str, Any]:
    """Balanced accuracy, accuracy per group, and the latency of scoring one text (mean over the set)."""
    start = time.perf_counter()
    flagged = guard.flags(texts)
    latency_ms = 1000 * (time.perf_counter() - start) / len(texts)
    y = np.asarray(labels, dtype=bool)
    correct = flagged == y
    per_group = {g: float(correct[np.asarray(groups) == g].mean()) for g in dict.fromkeys(groups)}
    return {"balanced_accuracy": float((correct[y].mean() + correct[~y].mean()) / 2), "per_group": per_group,
            "n": len(texts), "latency_ms_per_text": latency_ms}
