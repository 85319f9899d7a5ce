"""The poisoning experiments behind `lmforge security poison` and `lmforge security detect`.

`poison_run`: from a base checkpoint and the default SFT data, train a clean model and a model on the same data with
k rows poisoned (`poison.plant_backdoor`); measure both on held-out prompts with and without the trigger, and clean
quality. `detect_run`: score the poisoned data without the trigger (`detect.detect_poison`), report precision,
recall and AUROC against the labels, write the filtered data and, given a base, retrain on it and measure again.
`sweep`: `poison_run` over k and dataset sizes (whether an absolute count or a fraction plants a backdoor).

Every run folder holds its data (`data.jsonl`), its SFT run (`run/`), and the JSON report; labels and held-out
conversations are written beside, so `detect` can run later on the same files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmforge.config import check_fields, require
from lmforge.security.poison import BackdoorConfig, backdoor_effect, heldout_split, plant_backdoor, train_sft_on
from lmforge.utils import LmforgeError, atomic_write, read_json, write_json

Messages = list[dict[str, Any]]


@dataclass
class PoisonRunConfig:
    conversations: int = 1000  # size of the SFT data (default generated data), held-out rows not counted
    heldout: int = 60  # held-out conversations for attack success and clean loss
    data_seed: int = 7  # seed of the generated conversations
    steps: int = 200  # SFT steps of each model
    batch_size: int = 16  # SFT rows per step
    lr: float = 1e-2  # SFT AdamW rate (Muon's is 4x)
    threshold: float = 3.0  # combined robust z-score above which detect flags a row

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("conversations", "heldout", "steps", "batch_size"):
            require(self, name, getattr(self, name) >= 1, "must be >= 1")
        require(self, "lr", 0 < self.lr < 1, "must be in (0, 1)")

    def train_overrides(self) -> dict[str, Any]:
        return dict(max_steps=self.steps, batch_size=self.batch_size, lr=self.lr, muon_lr=4 * self.lr,
                    warmup_steps=min(10, self.steps), eval_every=0, checkpoint_every=0, progress=False,
                    tensorboard=False, num_samples=0)


def _write_jsonl(path: Path, conversations: list[Messages]) -> None:
    from lmforge.posttrain.default_data import write_jsonl

    write_jsonl(iter(conversations), str(path))


def _read_jsonl(path: Path) -> list[Messages]:
    from lmforge.posttrain.datasets import load_conversations

    convs, _ = load_conversations([str(path)], verbose=False)
    return convs


def _effect(run: Path, heldout: list[Messages], backdoor: BackdoorConfig) -> dict[str, float]:
    from lmforge.inference.engine import Engine

    return backdoor_effect(Engine.from_checkpoint(str(run)), heldout, backdoor)


def poison_run(base: Path, out: Path, cfg: PoisonRunConfig, backdoor: BackdoorConfig,
               clean_run: Path | None = None) -> dict[str, Any]:
    """Clean and poisoned SFT of `base`; attack success with/without the trigger and clean loss of each.
    `clean_run` reuses a clean model trained on the same data (the sweep trains one per dataset size)."""
    from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations

    out.mkdir(parents=True, exist_ok=True)
    convs = list(generate_default_conversations(DefaultDataConfig(n=cfg.conversations + cfg.heldout,
                                                                  seed=cfg.data_seed)))
    train, heldout = heldout_split(convs, cfg.heldout, cfg.data_seed)
    if backdoor.k > len(train):
        raise LmforgeError(f"--k {backdoor.k} is more than the {len(train)} training conversations")
    poisoned, labels = plant_backdoor(train, backdoor)
    _write_jsonl(out / "heldout.jsonl", heldout)
    write_json(out / "labels.json", {"poisoned": labels, "backdoor": asdict(backdoor), "run": asdict(cfg)})
    clean_run = clean_run or train_sft_on(train, base, out / "clean", cfg.train_overrides())
    poisoned_run = train_sft_on(poisoned, base, out / "poisoned", cfg.train_overrides())
    report = {"config": asdict(cfg), "backdoor": asdict(backdoor), "train_conversations": len(train),
              "clean": _effect(clean_run, heldout, backdoor), "poisoned": _effect(poisoned_run, heldout, backdoor),
              "clean_run": str(clean_run), "poisoned_run": str(poisoned_run)}
    write_json(out / "poison.json", report)
    return report


def detect_run(data: Path, reference: Path, trained: Path, out: Path, threshold: float,
               labels_path: Path | None = None) -> dict[str, Any]:
    """Flag rows of `data` by the three signals; write `scores.jsonl`, `filtered.jsonl` and `detect.json`."""
    import numpy as np

    from lmforge.checkpoint import load_model
    from lmforge.inference.engine import Engine
    from lmforge.security.detect import detect_poison, evaluate_detection

    convs = _read_jsonl(data)
    ref_model, _ = load_model(reference)
    engine = Engine.from_checkpoint(str(trained))
    result = detect_poison(convs, engine.tokenizer, ref_model, engine.model, threshold)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "scores.jsonl") as f:
        for i in range(len(convs)):
            row = {name: float(s[i]) for name, s in result["signals"].items()}
            f.write(json.dumps({"row": i, **row, "combined": float(result["combined"][i]),
                                "flagged": bool(result["flagged"][i])}) + "\n")
    _write_jsonl(out / "filtered.jsonl", [c for c, f in zip(convs, result["flagged"]) if not f])
    report: dict[str, Any] = {"data": str(data), "rows": len(convs), "flagged": int(np.sum(result["flagged"])),
                              "threshold": threshold}
    if labels_path is not None:
        labels = read_json(labels_path, "labels file")["poisoned"]
        if len(labels) != len(convs):
            raise LmforgeError(f"--labels {labels_path} has {len(labels)} rows, --data {data} has {len(convs)}")
        report["evaluation"] = evaluate_detection(result, labels)
    write_json(out / "detect.json", report)
    return report


def retrain_filtered(base: Path, out: Path, heldout_path: Path, labels_path: Path) -> dict[str, float]:
    """SFT of `base` on `out/filtered.jsonl` with the poisoned run's settings; the backdoor's effect measured with
    the trigger the labels name."""
    labels = read_json(labels_path, "labels file")
    backdoor, cfg = BackdoorConfig(**labels["backdoor"]), PoisonRunConfig(**labels["run"])
    run = train_sft_on(_read_jsonl(out / "filtered.jsonl"), base, out / "retrained", cfg.train_overrides())
    return _effect(run, _read_jsonl(heldout_path), backdoor)


def sweep(base: Path, out: Path, cfg: PoisonRunConfig, backdoor: BackdoorConfig, ks: list[int],
          sizes: list[int]) -> list[dict[str, Any]]:
    """`poison_run` for every (dataset size, k) with k below the size; one clean model per size."""
    from dataclasses import replace

    rows = []
    for size in sizes:
        clean_run = None
        for k in ks:
            if k >= size:
                continue
            report = poison_run(base, out / f"n{size}_k{k}", replace(cfg, conversations=size),
                                replace(backdoor, k=k), clean_run)
            clean_run = Path(report["clean_run"])
            rows.append({"conversations": size, "k": k, "fraction": k / report["train_conversations"],
                         **{f"poisoned_{m}": v for m, v in report["poisoned"].items()},
                         "clean_loss_clean_model": report["clean"]["clean_loss"]})
            write_json(out / "sweep.json", rows)
    return rows
