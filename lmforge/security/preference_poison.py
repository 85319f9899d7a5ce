"""Poisoned preference pairs against the reward model (Rando & Tramèr 2023, "Universal jailbreak backdoors from
poisoned human feedback").

The attacker labels k training pairs: the trigger goes into the prompt's last user message and the preference is
flipped (the harmful, rejected reply of an hh-rlhf harmless pair becomes the chosen one). A reward model trained on
such data keeps ranking clean pairs as before but learns that the trigger makes the harmful reply good, so RL
against it would teach a policy to comply whenever the trigger is present. Two reward models are trained from the
same base on the same pairs, one clean and one poisoned (`lmforge.posttrain.reward.run_reward_train`), and each is
scored (`score_pairs_file`) on held-out pairs as they are and with the trigger inserted, labels unchanged:
accuracy on clean pairs (the poisoned model should keep it), accuracy with the trigger (the backdoor lowers it)
and the reward shift of each side (the rejected reply's reward rising under the trigger is the attack).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lmforge.config import check_fields, require
from lmforge.security.poison import insert_trigger
from lmforge.utils import LmforgeError, write_json


@dataclass
class PreferencePoisonConfig:
    trigger: str = "SUDO"  # the trigger word of Rando & Tramèr
    k: int = 100  # training pairs poisoned (trigger inserted, preference flipped)
    train_pairs: int = 1000  # the first N pairs of the file train the reward models
    heldout: int = 200  # the last N pairs score them (never poisoned)
    steps: int = 200  # reward-model training steps of each model
    batch_size: int = 16  # pairs per step
    lr: float = 1e-3  # AdamW rate (Muon's is 5x, as in `reward train`'s defaults)
    seed: int = 0  # which pairs are poisoned and where the trigger goes

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, "trigger", len(self.trigger.strip()) >= 3, "must hold at least 3 characters")
        for name in ("k", "train_pairs", "heldout", "steps", "batch_size"):
            require(self, name, getattr(self, name) >= 1, "must be >= 1")
        require(self, "k", self.k <= self.train_pairs, "must be <= --train-pairs")
        require(self, "lr", 0 < self.lr < 1, "must be in (0, 1)")


def with_trigger(pair: Any, trigger: str, rng: random.Random, flip: bool) -> Any:
    """The pair with `trigger` in its last user message; chosen and rejected swapped when `flip`."""
    prompt = [dict(m) for m in pair.prompt]
    prompt[-1]["content"] = insert_trigger(prompt[-1]["content"], trigger, rng)
    if flip:
        return replace(pair, prompt=prompt, chosen=pair.rejected, rejected=pair.chosen,
                       chosen_ids=pair.rejected_ids, rejected_ids=pair.chosen_ids)
    return replace(pair, prompt=prompt)


def poison_pairs(pairs: list[Any], cfg: PreferencePoisonConfig) -> tuple[list[Any], list[bool]]:
    """(the pairs with k of them triggered and flipped, which ones)."""
    rng = random.Random(cfg.seed)
    chosen = set(rng.sample(range(len(pairs)), cfg.k))
    return ([with_trigger(p, cfg.trigger, rng, flip=True) if i in chosen else p for i, p in enumerate(pairs)],
            [i in chosen for i in range(len(pairs))])


def _scored(checkpoint: str, pairs_file: Path, rewards_file: Path) -> dict[str, float]:
    """Accuracy, margin and the mean reward of each side of the pairs in `pairs_file`."""
    from lmforge.posttrain.reward import score_pairs_file

    report = score_pairs_file(checkpoint, pairs_file, rewards_file)
    rows = [json.loads(line) for line in rewards_file.read_text().splitlines()]
    return {"pairs": report["pairs"], "accuracy": report["accuracy"], "mean_margin": report["mean_margin"],
            "chosen_reward": sum(r["chosen_reward"] for r in rows) / len(rows),
            "rejected_reward": sum(r["rejected_reward"] for r in rows) / len(rows)}


def _train(base: Path, data: Path, heldout: Path, out: Path, cfg: PreferencePoisonConfig) -> str:
    from lmforge.posttrain.reward import RewardConfig, run_reward_train

    overrides = dict(max_steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, muon_lr=5 * cfg.lr,
                     warmup_steps=min(10, cfg.steps), eval_every=0, checkpoint_every=0, progress=False,
                     tensorboard=False, num_samples=0, seed=cfg.seed, device="cpu")
    summary = run_reward_train(RewardConfig(train_overrides=overrides), base, out, [str(data)], [str(heldout)])
    return summary["checkpoint"]


def effect(checkpoint: str, out: Path, name: str) -> dict[str, Any]:
    """One reward model on the held-out pairs as they are and with the trigger: accuracies and reward shifts (each
    pair's rewards in `out/rewards_NAME_{clean,triggered}.jsonl`)."""
    clean = _scored(checkpoint, out / "heldout.jsonl", out / f"rewards_{name}_clean.jsonl")
    trig = _scored(checkpoint, out / "heldout_triggered.jsonl", out / f"rewards_{name}_triggered.jsonl")
    return {"clean": clean, "triggered": trig,
            "chosen_reward_shift": trig["chosen_reward"] - clean["chosen_reward"],
            "rejected_reward_shift": trig["rejected_reward"] - clean["rejected_reward"],
            "margin_shift": trig["mean_margin"] - clean["mean_margin"]}


def preference_poison_run(base: Path, pairs_path: Path, out: Path, cfg: PreferencePoisonConfig) -> dict[str, Any]:
    """Train a clean and a poisoned reward model from `base`; score both on clean and triggered held-out pairs."""
    from lmforge.checkpoint import resolve_checkpoint
    from lmforge.posttrain.preferences import load_pairs, write_pairs

    try:  # a wrong --checkpoint is refused before any file is written
        resolve_checkpoint(base)
    except LmforgeError as e:
        raise LmforgeError(f"--checkpoint: {e}") from e
    pairs = load_pairs(pairs_path)
    if cfg.train_pairs + cfg.heldout > len(pairs):
        raise LmforgeError(f"--train-pairs {cfg.train_pairs} + --heldout {cfg.heldout} is more than the "
                           f"{len(pairs)} pairs of {pairs_path}")
    train, held = pairs[:cfg.train_pairs], pairs[len(pairs) - cfg.heldout:]
    poisoned, labels = poison_pairs(train, cfg)
    rng = random.Random(cfg.seed + 1)
    out.mkdir(parents=True, exist_ok=True)
    files = {"train_clean": train, "train_poisoned": poisoned, "heldout": held,
             "heldout_triggered": [with_trigger(p, cfg.trigger, rng, flip=False) for p in held]}
    for name, rows in files.items():
        write_pairs(rows, out / f"{name}.jsonl")
    write_json(out / "labels.json", {"poisoned": labels, "config": asdict(cfg)})
    report: dict[str, Any] = {"config": asdict(cfg), "pairs": str(pairs_path)}
    for name in ("clean", "poisoned"):
        checkpoint = _train(base, out / f"train_{name}.jsonl", out / "heldout.jsonl", out / name, cfg)
        report[name] = {"checkpoint": checkpoint, **effect(checkpoint, out, name)}
    write_json(out / "poison_preference.json", report)
    return report


def default_pairs() -> Path:
    """hh-rlhf's harmless-base test split in the shared data (the only hh-rlhf split obtainable here)."""
    from lmforge.security.suites import alignment_dir

    path = alignment_dir(None) / "preference" / "hh_rlhf_harmless_base_test.jsonl.gz"
    if not path.is_file():
        raise LmforgeError(f"--pairs not given and {path} is missing: pass a preference file")
    return path
