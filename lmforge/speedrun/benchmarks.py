"""The speedrun's `evaluate` stage: the base model and the final assistant (the RL model) on the multiple-choice tasks
generated from the standard library (which signature belongs to a function, which module documents it), scored by
log-likelihood with a CORE-like aggregate and its bootstrap interval, as `lmforge eval mc` does; then what RL did:
held-out arithmetic of the SFT and the RL model (`lmforge eval sft`'s measure), the reward model's held-out accuracy
(from the `reward` stage), and the RL model's win rate over the SFT model judged by the reward model and by a
held-out judge, with the KL paid (`lmforge eval winrate`). The report card shows its tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.speedrun.context import SpeedrunContext
from lmforge.utils import write_json

# Both generated tasks (`lmforge eval mc`'s default), 4 options each; the bootstrap's 1000 resamples are its default.
MC_TASKS = ("stdlib_signature", "stdlib_module")
MC_BOOTSTRAP = 1000


def stage_evaluate(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Score the pretrained and the final checkpoints on the same generated items (each model's summary and every
    item's scores go to `<model>_mc.json`), then measure RL against SFT (`rl.json`, `winrate/`)."""
    from lmforge.evaluation.multiple_choice import evaluate_checkpoint, format_summary
    from lmforge.evaluation.stdlib_tasks import stdlib_items

    summary: dict[str, Any] = {"items_per_task": ctx.settings.mc_items, "models": {}}
    if ctx.inputs:
        summary["skipped"] = ("multiple choice on the stdlib documentation tasks: the models were trained on the "
                              "--input documents, not on the documentation site the tasks ask about")
        summary["rl"] = rl_measures(ctx, out)
        return summary
    items = stdlib_items(list(MC_TASKS), ctx.settings.mc_items, ctx.seed)
    for model, stage in (("base", "pretrain"), ("assistant", "rlhf")):
        result = evaluate_checkpoint(ctx.need(stage, "checkpoint"), items, samples=MC_BOOTSTRAP, seed=ctx.seed)
        print(f"{model}:\n{format_summary(result['summary'])}")
        write_json(out / f"{model}_mc.json", result)
        summary["models"][model] = result["summary"]
    summary["rl"] = rl_measures(ctx, out)
    return summary


def heldout_arithmetic(checkpoint: str, ctx: SpeedrunContext) -> dict[str, Any]:
    """`eval sft`'s final-answer accuracy with the calculator on the preset's number of held-out questions, with
    its 95% Wilson interval."""
    from lmforge.evaluation.sft_eval import SFTEvalConfig, evaluate_sft
    from lmforge.posttrain.reward import wilson_interval

    n = ctx.settings.rl_eval_arithmetic
    result = evaluate_sft(checkpoint, SFTEvalConfig(**{**ctx.settings.eval_sft, "arithmetic": n}), progress=False)
    right = round(result["accuracy_with_tool"] * n)
    return {"questions": n, "right": right, "accuracy": result["accuracy_with_tool"],
            "ci95": [round(x, 4) for x in wilson_interval(right, n)],
            "format_compliance": result["format_compliance"], "tool_call_accuracy": result["tool_call_accuracy"]}


def rl_measures(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """SFT vs RL: held-out arithmetic of both, the reward model's held-out accuracy, both win rates and the KL."""
    from lmforge.evaluation.winrate import WinRateConfig, format_winrate, run_winrate

    sft, rl = ctx.need("sft", "checkpoint"), ctx.need("rlhf", "checkpoint")
    arithmetic = {"sft": heldout_arithmetic(sft, ctx), "rl": heldout_arithmetic(rl, ctx)}
    for name, a in arithmetic.items():
        print(f"{name}: held-out arithmetic {a['right']}/{a['questions']} right ({100 * a['accuracy']:.1f}%, 95% CI "
              f"{100 * a['ci95'][0]:.1f}-{100 * a['ci95'][1]:.1f}%)")
    cfg = WinRateConfig(**{**ctx.settings.winrate, "seed": ctx.seed})
    win = run_winrate(cfg, rl, sft, out / "winrate", reward_model=ctx.need("reward", "checkpoint"))
    print(format_winrate(win))
    reward = ctx.results["reward"]
    result = {"arithmetic": arithmetic,
              "reward_model": {k: reward.get(k) for k in ("accuracy", "accuracy_ci95", "val_pairs", "mean_margin")},
              "win_rate": {judge: {k: win[judge][k] for k in ("win_rate", "ci95", "wins", "ties", "losses",
                                                              "comparisons", "judge")}
                           for judge in ("reward_model", "held_out_judge")},
              "kl": win["kl"], "winrate_file": str(out / "winrate" / "winrate.json")}
    write_json(out / "rl.json", result)
    return result
