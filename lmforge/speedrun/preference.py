"""The speedrun's preference stages, after the assistant's chat and before its export: `compare` (K answers per
held-out prompt from the SFT model), `label` (simulated labelers into the SQLite judgement store, then the decided
pairs exported), `reward` (the reward model, measured on the pairs of held-out prompts) and `rlhf` (GRPO from the
SFT model with the verifiable arithmetic reward plus the reward model). They call the same APIs as `lmforge rlhf
sample`, `lmforge label --simulate` / `label export`, `lmforge reward train` and `lmforge rlhf train`; each resumes
what a kill interrupted (the sampler by batch, the store by judgement, the trainers from their checkpoints).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from lmforge.speedrun.context import SpeedrunContext

LABEL_DB, PAIRS_FILE = "labels.sqlite", "pairs.jsonl"


def stage_compare(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """K answers per generated held-out prompt (arithmetic, stdlib questions, requests to refuse) from the SFT
    model, token ids, settings and seeds recorded (`samples/`)."""
    from lmforge.posttrain.compare import SampleConfig, load_samples, run_sample

    cfg = SampleConfig(**{**ctx.settings.compare, "seed": ctx.seed})
    manifest = run_sample(cfg, ctx.need("sft", "checkpoint"), out / "samples")
    records = load_samples(out / "samples")
    finish = Counter(a["finish_reason"] for r in records for a in r["responses"])
    kinds = Counter(r.get("kind", "other") for r in records)
    return {"samples_dir": str(out / "samples"), "prompts": manifest["n_items"], "k": cfg.k,
            "answers": sum(finish.values()), "prompt_kinds": dict(kinds), "finish_reasons": dict(finish)}


def stage_label(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Every pair of answers judged by each simulated labeler (one judgement per transaction in `labels.sqlite`,
    as the labeling page stores a person's), then the decided pairs exported as `pairs.jsonl`; the store's report
    (agreement on repeated and gold items, kappa, position bias) goes to `label_report.txt`."""
    from lmforge.posttrain.compare import load_samples
    from lmforge.posttrain.label_report import export_pairs, format_report, report, simulate_labeling
    from lmforge.posttrain.label_store import LabelStore, StoreConfig
    from lmforge.posttrain.simulate import SimulatedLabeler

    samples_dir = ctx.need("compare", "samples_dir")
    labelers = [SimulatedLabeler(name, noise, seed) for name, noise, seed in ctx.settings.labelers]
    config = StoreConfig(votes=len(labelers), seed=ctx.seed)
    with LabelStore(load_samples(samples_dir), out / LABEL_DB, config, source=samples_dir) as store:
        for labeler in labelers:
            # a rerun after a kill goes on from the store's state: the labeler is only shown what it has not judged
            simulate_labeling(store, labeler, f"sim-{labeler.name}-{labeler.seed}")
        rep = report(store)
        counts = export_pairs(store, str(out / PAIRS_FILE), source=samples_dir)
    (out / "label_report.txt").write_text(format_report(rep) + "\n", encoding="utf-8")
    print(format_report(rep))
    return {"pairs_file": str(out / PAIRS_FILE), "db": str(out / LABEL_DB), **counts,
            "annotators": rep["annotators"], "kappa": rep["kappa"]}


def stage_reward(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """The reward model: the SFT model with a scalar head, trained on the exported pairs; its accuracy on the pairs
    of the held-out prompts (the export's last ones), with a 95% Wilson interval."""
    from lmforge.posttrain.reward import RewardConfig, run_reward_train

    settings = ctx.settings
    cfg = RewardConfig(val_frac=settings.reward_val_frac, train_overrides={**settings.reward, "seed": ctx.seed})
    s = run_reward_train(cfg, ctx.need("sft", "checkpoint"), out / "run", [ctx.need("label", "pairs_file")])
    report = s["eval"]
    return {"run_dir": s["run_dir"], "checkpoint": s["checkpoint"], "step": s["step"], "loss": s["loss"],
            "val_loss": s["val_loss"], "train_pairs": s["data"]["train"]["pairs"], "val_pairs": report["pairs"],
            "accuracy": report["accuracy"], "accuracy_ci95": report["accuracy_ci95"],
            "mean_margin": report["mean_margin"]}


def reward_model_validated(reward: dict[str, Any]) -> tuple[bool, str]:
    """Whether RL may optimise against the reward model: only when its held-out accuracy is above chance with 95%
    confidence (the interval's lower end above 50%). A reward model at chance is noise that RL would still climb,
    paying KL for nothing: in one full default run (47.9% held out) RL lowered held-out arithmetic from 109 to 95 of
    200. Returns the verdict and its reason, which the stage's summary keeps."""
    low, high = reward["accuracy_ci95"]
    verdict = low > 0.5
    reason = (f"held-out accuracy {reward['accuracy']:.3f} (95% interval {low:.3f}-{high:.3f}) "
              + ("is above chance: used" if verdict else "does not exclude chance: left out of the RL reward"))
    return verdict, reason


def stage_rlhf(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """GRPO from the SFT model, rewarded by the arithmetic checker plus the reward model when the reward model is
    validated (`reward_model_validated`); the per-step metrics and `reward_vs_kl.png` are in `run/`."""
    from lmforge.posttrain.rl import RLConfig, run_rl
    from lmforge.speedrun.report import read_metrics

    use_rm, why = reward_model_validated(ctx.results["reward"])
    print(f"[speedrun] rlhf: reward model {why}")
    extra = {"rewards": ["arithmetic", "reward_model"], "reward_model": ctx.need("reward", "checkpoint")} if use_rm \
        else {"rewards": ["arithmetic"]}
    cfg = RLConfig(**{**ctx.settings.rlhf, **extra, "seed": ctx.seed})
    s = run_rl(cfg, ctx.need("sft", "checkpoint"), out / "run")
    rows = read_metrics(out / "run" / "metrics.jsonl")
    first, last = rows[0], rows[-1]
    return {"run_dir": s["run_dir"], "checkpoint": s["checkpoint"], "step": s["step"],
            "rewards": cfg.rewards, "reward_model_used": use_rm, "reward_model_verdict": why,
            "reward_vs_kl_plot": s["reward_vs_kl_plot"], "first_step_reward": first.get("reward"),
            "last_step_reward": last.get("reward"), "last_step_kl_k3": last.get("kl_k3"),
            **{f"last_step_{k}": v for k, v in last.items() if k.startswith("reward_")}}
