"""The speedrun's assistant stages: `sft` (base model -> assistant) and `chat` (a scripted chat with tools, then
the `eval sft` measures). They call the same APIs as `lmforge sft`, `lmforge chat` and `lmforge eval sft`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.speedrun.context import SpeedrunContext
from lmforge.speedrun.settings import CHAT_MAX_TOKENS, CHAT_SCRIPT
from lmforge.utils import write_json


def stage_sft(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Fine-tune the base model into an assistant on the generated default SFT data (stdlib Q&A, identity,
    calculator tool use, refusals; saved as `run/sft_data.jsonl`). Runs again, it resumes."""
    from lmforge.posttrain.sft import SFTConfig, run_sft

    base = ctx.need("pretrain", "checkpoint")
    settings = ctx.settings
    cfg = SFTConfig(default_conversations=settings.sft_conversations, data_seed=ctx.seed,
                    max_val=settings.sft_max_val, train_overrides={**settings.sft, "seed": ctx.seed})
    s = run_sft(cfg, base, out / "run")
    return {"run_dir": s["run_dir"], "checkpoint": s["checkpoint"], "step": s["step"], "loss": s["loss"],
            "val_loss": s["val_loss"], "seconds_training": s["seconds"], "data": s["data"],
            "data_file": str(out / "run" / "sft_data.jsonl"), "loss_plot": s.get("loss_plot"),
            "samples": s.get("samples")}


def scripted_chat(checkpoint: str, seed: int) -> tuple[str, int, Any]:
    """Ask every question of the chat script in one conversation (greedy, with the default tools): the
    transcript, the number of tool calls, and the session (to save its messages)."""
    from lmforge.inference.chat import ChatConfig, ChatSession, TurnEvent
    from lmforge.inference.engine import Engine
    from lmforge.inference.tools import default_tools

    engine = Engine.from_checkpoint(checkpoint)
    chat = ChatSession(engine, default_tools(), config=ChatConfig(temperature=0.0, max_tokens=CHAT_MAX_TOKENS,
                                                                  seed=seed))
    lines: list[str] = []
    tool_calls = 0
    for question in CHAT_SCRIPT:
        lines.append(f"user> {question}")
        pieces: list[str] = []

        def show(e: TurnEvent) -> None:
            if e.kind == "text":
                pieces.append(e.text)
            else:
                pieces.append(f"\n  [{e.name}{' output' if e.kind == 'tool_output' else ''}] {e.text}\n  ")

        turn = chat.respond(question, on_event=show)
        tool_calls += len(turn["tool_calls"])
        lines.append("assistant> " + "".join(pieces).strip() + ("" if turn["ended"] else f" ({turn['finish_reason']})"))
    return "\n".join(lines), tool_calls, chat


def stage_chat(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """A short scripted chat with the fine-tuned model and its tools (calculator first), printed and saved as
    `chat.txt` and `chat.json`, then the `eval sft` measures (format compliance, tool-call rate and accuracy,
    masked validation loss), saved as `eval.txt` and `eval.json`."""
    from lmforge.evaluation.sft_eval import SFTEvalConfig, evaluate_sft, format_report

    checkpoint = ctx.need("sft", "checkpoint")
    transcript, tool_calls, chat = scripted_chat(checkpoint, ctx.seed)
    print(transcript)
    (out / "chat.txt").write_text(transcript + "\n", encoding="utf-8")
    chat.save(out / "chat.json")

    result = evaluate_sft(checkpoint, SFTEvalConfig(**ctx.settings.eval_sft))
    report = format_report(result)
    print(report)
    (out / "eval.txt").write_text(report + "\n", encoding="utf-8")
    write_json(out / "eval.json", result)
    return {"transcript": str(out / "chat.txt"), "messages": str(out / "chat.json"), "tool_calls": tool_calls,
            **{k: result[k] for k in ("format_compliance", "tool_call_rate", "tool_call_accuracy",
                                      "accuracy_with_tool", "accuracy_without_tool", "masked_val_loss")}}
