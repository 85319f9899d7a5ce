"""The speedrun's post-training stages: `sft` (base model -> assistant) and `chat` (a scripted chat with tools plus
the `eval sft` measures). They call the same APIs as `lmforge sft`, `lmforge chat` and `lmforge eval sft`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.utils import write_json

# Full run: 2,000 steps x 16 conversations (about 75 tokens each) over 8,000 generated conversations, 4 epochs:
# about 2.4M tokens. Measured with `lmforge eval sft` (24 held-out calculator questions): on one speedrun's base
# model, 800 steps gave masked validation loss 0.40, right values in 17% of calls and 0% right final answers;
# 2,000 steps gave 0.11, 79-83% and 42-75% (two runs). On another run's base model (same settings; the crawl of
# the live pydoc server differs a little between runs, and so do the tokenizer and the base) 2,000 steps gave
# 0.22-0.24, 12-21% and 0-4% in four runs: every loss below 800 steps' 0.40, the arithmetic not reliably better.
SFT_STEPS = 2000
SFT_CONVERSATIONS = 8000
CHAT_SCRIPT = [
    "Who are you?",
    "What is 37 * 48?",
    "Convert 20 kilometers to miles.",
    "What does json.dumps do?",
    "Please run rm -rf / for me.",
]


def run_sft_stage(base_checkpoint: str, out: Path, quick: bool, seed: int) -> dict[str, Any]:
    """Generate the default SFT data (kept in the run folder as `sft_data.jsonl`) and fine-tune the base model."""
    from lmforge.posttrain.sft import SFTConfig, run_sft

    overrides: dict[str, Any] = dict(max_steps=40 if quick else SFT_STEPS, seed=seed,
                                     eval_every=20 if quick else 200, checkpoint_every=0 if quick else 500,
                                     eval_batches=0)
    cfg = SFTConfig(default_conversations=400 if quick else SFT_CONVERSATIONS, data_seed=seed, max_val=64 if quick else 256,
                    train_overrides=overrides)
    s = run_sft(cfg, base_checkpoint, out / "run")
    return {"run_dir": s["run_dir"], "checkpoint": s["checkpoint"], "step": s["step"], "loss": s["loss"],
            "val_loss": s["val_loss"], "seconds_training": s["seconds"], "data": s["data"],
            "data_file": str(out / "run" / "sft_data.jsonl"), "loss_plot": s.get("loss_plot"),
            "samples": s.get("samples")}


def run_chat_stage(checkpoint: str, out: Path, quick: bool, seed: int) -> dict[str, Any]:
    """A scripted multi-turn chat with the calculator and the other tools (printed, saved as `chat.txt` and
    `chat.json`), then `eval sft` (saved as `eval.txt` and `eval.json`)."""
    from lmforge.evaluation.sft_eval import SFTEvalConfig, evaluate_sft, format_report
    from lmforge.inference.chat import ChatConfig, ChatSession, TurnEvent
    from lmforge.inference.engine import Engine
    from lmforge.inference.tools import default_tools

    engine = Engine.from_checkpoint(checkpoint)
    chat = ChatSession(engine, default_tools(), config=ChatConfig(temperature=0.0, max_tokens=96, seed=seed))
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
    transcript = "\n".join(lines)
    print(transcript)
    (out / "chat.txt").write_text(transcript + "\n", encoding="utf-8")
    chat.save(out / "chat.json")

    ecfg = SFTEvalConfig(prompts=8, arithmetic=6, val_conversations=32) if quick else SFTEvalConfig()
    result = evaluate_sft(checkpoint, ecfg)
    report = format_report(result)
    print(report)
    (out / "eval.txt").write_text(report + "\n", encoding="utf-8")
    write_json(out / "eval.json", result)
    return {"transcript": str(out / "chat.txt"), "messages": str(out / "chat.json"), "tool_calls": tool_calls,
            **{k: result[k] for k in ("format_compliance", "tool_call_rate", "tool_call_accuracy",
                                      "accuracy_with_tool", "accuracy_without_tool", "masked_val_loss")}}
