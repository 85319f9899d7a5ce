"""The speedrun's `evaluate` stage: the base model and the assistant on the multiple-choice tasks generated from the
standard library (which signature belongs to a function, which module documents it), scored by log-likelihood with
a CORE-like aggregate and its bootstrap interval, as `lmforge eval mc` does. Last in the stage table, so the
folders of runs made before it keep their numbers; the report card shows its table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.speedrun.context import SpeedrunContext
from lmforge.utils import write_json

# Both generated tasks (`lmforge eval mc`'s default), 4 options each; the bootstrap's 1000 resamples are its default.
MC_TASKS = ("stdlib_signature", "stdlib_module")
MC_BOOTSTRAP = 1000


def stage_evaluate(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Score the pretrained and the fine-tuned checkpoints on the same generated items; each model's summary and
    every item's scores go to `<model>_mc.json`."""
    from lmforge.evaluation.multiple_choice import evaluate_checkpoint, format_summary
    from lmforge.evaluation.stdlib_tasks import stdlib_items

    items = stdlib_items(list(MC_TASKS), ctx.settings.mc_items, ctx.seed)
    summary: dict[str, Any] = {"items_per_task": ctx.settings.mc_items, "models": {}}
    for model, stage in (("base", "pretrain"), ("assistant", "sft")):
        result = evaluate_checkpoint(ctx.need(stage, "checkpoint"), items, samples=MC_BOOTSTRAP, seed=ctx.seed)
        print(f"{model}:\n{format_summary(result['summary'])}")
        write_json(out / f"{model}_mc.json", result)
        summary["models"][model] = result["summary"]
    return summary
