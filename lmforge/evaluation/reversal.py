"""The reversal curse probe (Berglund et al. 2023): a model fine-tuned on "A's teacher is B" learns that direction
and not the other one.

Facts pair invented names (so no model knows them beforehand): the fine-tuning data states each only forwards,
"A's teacher is B.". Both directions are then asked as multiple choice among names the model saw in training, so
familiarity with a name does not help:
  forward: "A's teacher is" -> which of B and three other teachers?
  reverse: "B is the teacher of" -> which of A and three other students?
Before and after the fine-tune. The curse shows as forward accuracy near 1 and reverse accuracy near chance (1/4):
what the model stored is a mapping from A to B, not a symmetric relation.

Fine-tuning uses the public training loop (`lmforge.train.train`) with its own batch source of the statements.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.evaluation.multiple_choice import MCItem, evaluate_items
from lmforge.utils import LmforgeError, write_json

SYLLABLES = ("ka", "zu", "mo", "te", "ri", "va", "lo", "ne", "su", "pi", "do", "fe", "gar", "wen", "tis", "bro",
             "ul", "sha", "qui", "mar")
CHOICES = 4


@dataclass
class ReversalConfig:
    facts: int = 24
    seed: int = 0
    steps: int = 300  # fine-tuning steps
    batch_size: int = 8
    lr: float = 3e-3
    muon_lr: float = 0.02

    def __post_init__(self) -> None:
        if self.facts < CHOICES:
            raise LmforgeError(f"--facts must be at least {CHOICES} (each question has {CHOICES} choices)")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise LmforgeError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or self.muon_lr <= 0:
            raise LmforgeError("--lr and --muon-lr must be positive")


def invented_names(count: int, rng: random.Random) -> list[str]:
    """`count` distinct two-word names made of syllables (no real person's, almost surely)."""
    names: set[str] = set()
    while len(names) < count:
        first = "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()
        last = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        names.add(f"{first} {last}")
    return sorted(names)


def make_facts(count: int, seed: int) -> list[tuple[str, str]]:
    """(student, teacher) pairs, every name used once."""
    rng = random.Random(f"reversal:{seed}")
    names = invented_names(2 * count, rng)
    rng.shuffle(names)
    return list(zip(names[:count], names[count:]))


def statement(student: str, teacher: str) -> str:
    return f"{student}'s teacher is {teacher}."


def probe_items(facts: list[tuple[str, str]], seed: int) -> list[MCItem]:
    """Forward and reverse questions, CHOICES options each, distractors drawn from the other facts."""
    rng = random.Random(f"reversal-items:{seed}")
    items = []
    for k, (student, teacher) in enumerate(facts):
        others = [f for j, f in enumerate(facts) if j != k]
        picks = rng.sample(others, CHOICES - 1)
        teachers = [teacher, *(t for _, t in picks)]
        students = [student, *(s for s, _ in picks)]
        rng.shuffle(teachers)
        rng.shuffle(students)
        items.append(MCItem("forward", f"{student}'s teacher is", [" " + t for t in teachers],
                            teachers.index(teacher)))
        items.append(MCItem("reverse", f"{teacher} is the teacher of", [" " + s for s in students],
                            students.index(student)))
    return items


class FactBatches:
    """Rows of `<|bos|>` + one forward statement, right-padded (targets -1 there), in a fresh shuffled order each
    pass; the state is the number of batches handed out, so a resumed fine-tune continues exactly."""

    def __init__(self, rows: list[list[int]], batch_size: int, seed: int) -> None:
        self.rows, self.batch_size, self.seed, self.batches = rows, batch_size, seed, 0
        self.width = max(len(r) for r in rows) - 1

    def next_batch(self):
        import torch

        per_pass = max(1, len(self.rows) // self.batch_size)
        epoch, at = divmod(self.batches, per_pass)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        chosen = [self.rows[i] for i in order[at * self.batch_size:(at + 1) * self.batch_size]]
        x = torch.zeros((len(chosen), self.width), dtype=torch.long)
        y = torch.full((len(chosen), self.width), -1, dtype=torch.long)
        for j, r in enumerate(chosen):
            x[j, :len(r) - 1] = torch.tensor(r[:-1])
            y[j, :len(r) - 1] = torch.tensor(r[1:])
        self.batches += 1
        return x, y

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])


def accuracies(model: Any, tokenizer: Any, items: list[MCItem]) -> dict[str, float]:
    results = evaluate_items(model, tokenizer, items)
    return {d: float(np.mean([r["correct"]["sum"] for r in results if r["task"] == d])) for d in ("forward",
                                                                                                  "reverse")}


def run_reversal(checkpoint: str | Path | None, out: str | Path, cfg: ReversalConfig,
                 model_config: Any = None, tokenizer_dir: str | Path | None = None) -> dict[str, Any]:
    """Probe, fine-tune on the forward statements, probe again; writes out/reversal.json and returns it.

    From `checkpoint` (its tokenizer), or, for tests, from scratch with `model_config` and `tokenizer_dir`.
    """
    from lmforge.checkpoint import checkpoint_tokenizer_dir, load_model
    from lmforge.model import GPT
    from lmforge.tokenizer import Tokenizer
    from lmforge.train import TrainConfig, train

    out = Path(out)
    tok_dir = Path(tokenizer_dir) if checkpoint is None else checkpoint_tokenizer_dir(checkpoint)
    tokenizer = Tokenizer.load(tok_dir)
    facts = make_facts(cfg.facts, cfg.seed)
    items = probe_items(facts, cfg.seed)
    if checkpoint is not None:
        before_model, _ = load_model(checkpoint)
    else:
        import torch

        torch.manual_seed(cfg.seed)
        before_model = GPT(model_config).eval()
    before = accuracies(before_model, tokenizer, items)
    rows = [[tokenizer.bos_id] + tokenizer.encode(statement(s, t)) for s, t in facts]
    if max(len(r) for r in rows) > before_model.config.block_size + 1:
        raise LmforgeError(f"a statement is longer than the model's context of {before_model.config.block_size}")
    tcfg = TrainConfig(max_steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, muon_lr=cfg.muon_lr,
                       warmup_steps=max(1, cfg.steps // 20), eval_every=0, num_samples=0, checkpoint_every=0,
                       keep_checkpoints=1, tensorboard=False, progress=False, seed=cfg.seed, device="cpu")
    summary = train(tcfg, FactBatches(rows, cfg.batch_size, cfg.seed), None, out / "finetune",
                    init_checkpoint=checkpoint, tokenizer_dir=tok_dir, model_config=model_config)
    after_model, _ = load_model(summary["checkpoint"])
    report = {"config": asdict(cfg), "facts": [statement(s, t) for s, t in facts], "chance": 1 / CHOICES,
              "before": before, "after": accuracies(after_model, tokenizer, items),
              "final_train_loss": summary["loss"], "checkpoint": str(checkpoint) if checkpoint else None}
    write_json(out / "reversal.json", report)
    return report


def format_reversal(report: dict[str, Any]) -> str:
    b, a = report["before"], report["after"]
    return (f"reversal curse probe: {len(report['facts'])} facts stated forwards only, {CHOICES} choices "
            f"(chance {report['chance']:.2f})\n"
            f"  forward  (A's teacher is ?):     before {b['forward']:.3f}  after {a['forward']:.3f}\n"
            f"  reverse  (B is the teacher of ?): before {b['reverse']:.3f}  after {a['reverse']:.3f}\n"
            f"  final training loss {report['final_train_loss']:.4f}")
