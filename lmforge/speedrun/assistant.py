"""The speedrun's assistant stages: `sft` (base model -> assistant), `chat` (a scripted chat with tools, then the
`eval sft` measures) and `export_assistant` (the final assistant, the RL model of the `rlhf` stage: the model a user
takes away, as the parameter files the C runner chats with, a Hugging Face folder and a GGUF file). They call the
same APIs as `lmforge sft`, `lmforge chat`, `lmforge eval sft` and `lmforge export`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lmforge.speedrun.base_model import export_hf_gguf, export_params_files
from lmforge.speedrun.context import SpeedrunContext
from lmforge.speedrun.settings import CHAT_MAX_TOKENS, CHAT_SCRIPT
from lmforge.utils import write_json

# A tool output line of the C runner's chat ("  [calculator output] 1776"), as `lmforge chat` prints one.
TOOL_OUTPUT_LINE = re.compile(r"^  \[(\S+) output\] ", re.MULTILINE)


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


def c_chat(binary: Path, params_file: Path, seed: int) -> tuple[str, int]:
    """Ask every question of the chat script, each in a conversation of its own, through the C runner's chat mode
    (greedy, the calculator run by the runner): the transcript and the number of tool calls."""
    from lmforge.export.crunner import run_runner

    lines, tool_calls = [], 0
    for question in CHAT_SCRIPT:
        r = run_runner(binary, params_file, question, steps=CHAT_MAX_TOKENS, temperature=0.0, seed=seed,
                       extra=["-m", "chat"])
        tool_calls += len(TOOL_OUTPUT_LINE.findall(r.text))
        lines += [f"user> {question}", "assistant> " + r.text.strip()]
    return "\n".join(lines), tool_calls


def stage_export_assistant(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """The final assistant (the RL model) as two files (`model_fp32.bin`, or `model_int8.bin`, and the C runner),
    recorded as a chat model, plus `hf/` for transformers and `model.gguf` for llama.cpp; the C runner then answers
    the chat script (its calculator runs in C), saved as `chat.txt`."""
    from lmforge.checkpoint import checkpoint_tokenizer_dir, resolve_checkpoint
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenizer.chat_format import render_for_completion

    checkpoint = resolve_checkpoint(ctx.need("rlhf", "checkpoint"))
    # RL's checkpoints record no SFT data, which is how `lmforge export` recognises a chat model; the speedrun knows
    # this one descends from the SFT model, so it says so
    files, sizes, binary = export_params_files(checkpoint, out, "model", chat=True)
    tok = Tokenizer.load(checkpoint_tokenizer_dir(checkpoint))
    check_ids = render_for_completion(tok, [{"role": "user", "content": CHAT_SCRIPT[1]}])
    exported = export_hf_gguf(checkpoint, out / "hf", out / "model.gguf", check_ids)
    transcript, tool_calls = c_chat(binary, files["fp32"], ctx.seed)
    print(transcript)
    (out / "chat.txt").write_text(transcript + "\n", encoding="utf-8")
    return {"checkpoint": str(checkpoint), "params_file": str(files["fp32"]), "params_file_int8": str(files["int8"]),
            "runner": str(binary), "bytes": sizes, "transcript": str(out / "chat.txt"), "c_tool_calls": tool_calls,
            **exported}
