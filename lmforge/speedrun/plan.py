"""`lmforge speedrun --plan`: what a preset will do, stage by stage, before it runs.

The tokens of the two training stages come from the preset's settings; their expected time and cost on GPUs come
from `lmforge model info`'s cost model (`model_info`: 6N FLOPs a token plus attention, at a stated peak and MFU),
so the plan and `lmforge model info` cannot disagree. CPU presets state their measured wall time instead: the cost
model prices GPU hours, and a 2-core machine's throughput is measured, not looked up.
"""

from __future__ import annotations

from typing import Any

from lmforge.speedrun.settings import PRESETS, SFT_TOKENS_PER_CONVERSATION, Settings

# The trainer's SFT batch when the preset does not set one (`posttrain/sft.py`'s default TrainConfig).
SFT_DEFAULT_BATCH = 16


def training_tokens(settings: Settings) -> dict[str, int]:
    """Tokens the pretraining and SFT stages process, over all GPUs (the trainer's batch is per process)."""
    from lmforge.model import GPTConfig

    pretrain = settings.pretrain
    seq_len = pretrain.get("seq_len") or GPTConfig.from_preset(pretrain["preset"]).block_size
    world = max(settings.gpus, 1)
    pretrain_tokens = pretrain["max_steps"] * pretrain.get("batch_size", 16) * pretrain.get("grad_accum", 1) * seq_len
    sft = settings.sft
    sft_tokens = sft["max_steps"] * sft.get("batch_size", SFT_DEFAULT_BATCH) * SFT_TOKENS_PER_CONVERSATION
    return {"pretrain": pretrain_tokens * world, "sft": sft_tokens * world}


def plan(preset: str) -> dict[str, Any]:
    """Per-stage sizes, the training tokens, and (GPU presets) the cost model's time and price."""
    from lmforge.speedrun.runner import STAGES
    from lmforge.train.cli import model_info

    settings = PRESETS[preset]
    tokens = training_tokens(settings)
    stages = {stage.name: "" for stage in STAGES}
    stages.update(crawl=f"up to {settings.crawl_pages} pages", tokenizer=f"vocabulary {settings.vocab_size}",
                  pretrain=f"{settings.pretrain['preset']} model, {settings.pretrain['max_steps']} steps, "
                           f"{tokens['pretrain']:,} tokens",
                  sft=f"{settings.sft_conversations} conversations, {settings.sft['max_steps']} steps, "
                      f"~{tokens['sft']:,} tokens",
                  compare=f"{settings.compare['n_prompts']} prompts x {settings.compare['k']} answers",
                  label=f"{len(settings.labelers)} simulated labeler(s)",
                  reward=f"{settings.reward['max_steps']} steps",
                  rlhf=f"GRPO, {settings.rlhf['steps']} steps of {settings.rlhf['prompts_per_step']} x "
                       f"{settings.rlhf['group_size']} answers")
    result: dict[str, Any] = {"preset": preset, "gpus": settings.gpus, "stages": stages, "tokens": tokens}
    if settings.gpus:
        model = {"vocab_size": settings.vocab_size}
        costs = [model_info(settings.pretrain["preset"], tokens[name], gpus=settings.gpus, overrides=model)
                 for name in ("pretrain", "sft")]
        result["params"] = costs[0]["params"]
        result["train_seconds"] = sum(c["train_seconds"] for c in costs)
        result["gpu_hours"] = sum(c["gpu_hours"] for c in costs)
        result["usd"] = sum(c["usd"] for c in costs)
        result["assumptions"] = costs[0]["throughput"]
    else:
        result["expected_minutes"] = settings.cpu_minutes
    return result


def format_plan(info: dict[str, Any]) -> str:
    lines = [f"speedrun plan, preset {info['preset']} "
             f"({'%d GPU(s)' % info['gpus'] if info['gpus'] else 'CPU, 2 cores'}):"]
    lines += [f"  {name:<18} {what}".rstrip() for name, what in info["stages"].items()]
    if info["gpus"]:
        t = info["assumptions"]
        lines.append(f"  training: {info['params']:,} parameters, {sum(info['tokens'].values()):,} tokens, "
                     f"{info['train_seconds']:.0f} s of compute on {info['gpus']} GPU(s) at {t['tflops_per_gpu']:g} "
                     f"TFLOP/s peak and {100 * t['mfu']:.0f}% MFU = {info['gpu_hours']:.3f} GPU-hours, about "
                     f"${info['usd']:.2f} (lmforge model info's cost model; the crawl and the other stages add "
                     f"minutes of CPU time)")
    else:
        lines.append(f"  expected: about {info['expected_minutes']:g} minutes on 2 cores (measured)")
    return "\n".join(lines)
