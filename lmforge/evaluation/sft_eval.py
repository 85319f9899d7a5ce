"""How well a fine-tuned checkpoint behaves as an assistant: the measures of `lmforge eval sft`.

- format compliance: the share of answers (greedy, on held-out prompts) that end with `<|end|>` within the token
  budget. A base model almost never does; an SFT model should almost always. The prompts are fresh samples of the
  default generator (another seed): unseen conversations, though about the same stdlib facts the training saw.
- tool use on held-out arithmetic (questions from a seed the training data never used): how often the model calls
  the calculator, how often that call is well formed and gives the right value, and how often the final answer
  holds the right number; then the same questions "without the tool": the answer is primed with "The answer is "
  and tools are disabled, so the number comes from the model's own weights. The gap is what the tool buys.
- masked validation loss: mean cross-entropy over the assistant tokens of held-out conversations (the SFT loss).
- a table of sample conversations.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmforge.inference.chat import ChatConfig
from lmforge.utils import LmforgeError, write_json

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class SFTEvalConfig:
    prompts: int = 32  # held-out prompts for format compliance
    arithmetic: int = 24  # held-out arithmetic questions (each asked with and without the tool)
    val_conversations: int = 128  # for the masked validation loss
    samples: int = 6  # rows of the sample table
    max_tokens: int = 96
    seed: int = 2468  # the held-out data's seed (training data uses other seeds)
    unsafe_python: bool = False  # run the model's Python unjailed where no OS jail can be made (see inference/jail)

    def __post_init__(self) -> None:
        """Refuse counts that would silently measure nothing or the wrong slice (a negative count cuts from the
        end) before the model loads; the sampling fields are checked by the chat configuration they become."""
        low = {"prompts": 0, "arithmetic": 0, "samples": 0, "val_conversations": 1}
        bad = [f"{name} must be at least {least}, got {getattr(self, name)}" for name, least in low.items()
               if getattr(self, name) < least]
        if bad:
            raise LmforgeError("; ".join(bad))
        self.chat_config()

    def chat_config(self) -> ChatConfig:
        """Greedy answers, so a measure depends on the checkpoint alone."""
        return ChatConfig(temperature=0.0, max_tokens=self.max_tokens, seed=self.seed)


def numbers_in(text: str) -> list[float]:
    return [float(x) for x in _NUMBER.findall(text.replace(",", ""))]


def matches(text: str, expected: str) -> bool:
    """Whether `text` contains the expected number (relative tolerance 1e-4, for rounded copies of long decimals)."""
    want = float(expected)
    return any(math.isclose(x, want, rel_tol=1e-4, abs_tol=1e-6) for x in numbers_in(text))


def masked_val_loss(model: Any, tok: Any, conversations: list[list[dict[str, Any]]], batch_size: int = 16) -> float:
    """Mean cross-entropy over the assistant's tokens (mask 1) of the conversations: the SFT validation loss."""
    import torch

    from lmforge.tokenizer.chat_format import ChatTokens
    from lmforge.train.bpb import loss_and_bytes
    from lmforge.posttrain.sft import encode_examples, val_batches

    examples = encode_examples(tok, conversations, model.config.block_size + 1)
    total, count = 0.0, 0
    with torch.inference_mode():
        for x, y in val_batches(examples, batch_size, ChatTokens.of(tok).pad, max_len=model.config.block_size)():
            logits, _ = model(x)
            loss, n, _ = loss_and_bytes(logits, y)
            total += loss
            count += int(n)
    return total / max(count, 1)


def _show(turn: dict[str, Any]) -> str:
    parts = []
    for m in turn["messages"]:
        if m["role"] == "tool":
            parts.append(f"[{m['name']} -> {m['content']}]")
        else:
            parts.append(m["content"] + "".join(f"[{c['name']}: {c['arguments']}]" for c in m.get("tool_calls", [])))
    return " ".join(p for p in parts if p) + ("" if turn["ended"] else " …(no <|end|>)")


def evaluate_sft(checkpoint: str | Path, cfg: SFTEvalConfig = SFTEvalConfig(), device: str = "cpu",
                 progress: bool = True) -> dict[str, Any]:
    """Every measure above for one checkpoint; a JSON-able dict."""
    from tqdm import tqdm

    from lmforge.inference.chat import ChatSession
    from lmforge.inference.engine import Engine
    from lmforge.inference.tools import default_tools
    from lmforge.tokenizer.chat_format import prompt_of
    from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations, heldout_arithmetic
    from lmforge.posttrain.reward import wilson_interval

    t0 = time.perf_counter()
    engine = Engine.from_checkpoint(str(checkpoint), device=device)
    tok = engine.tokenizer
    chat_cfg = cfg.chat_config()
    tools = default_tools(unsafe_python=cfg.unsafe_python)
    held = list(generate_default_conversations(DefaultDataConfig(n=max(cfg.prompts, cfg.val_conversations),
                                                                 seed=cfg.seed)))
    bar = tqdm(total=cfg.prompts + 2 * cfg.arithmetic, desc="eval sft", disable=not progress, dynamic_ncols=True)

    samples: list[dict[str, str]] = []
    ended = 0
    for conv in held[:cfg.prompts]:
        prompt = prompt_of(conv)
        chat = ChatSession(engine, tools, config=chat_cfg)
        chat.messages = list(prompt)
        turn = chat.respond(None)
        ended += turn["ended"]
        if len(samples) < cfg.samples:
            samples.append({"user": prompt[-1]["content"], "assistant": _show(turn)})
        bar.update()

    questions = heldout_arithmetic(cfg.arithmetic, seed=cfg.seed + 1)
    called = call_correct = with_tool = without_tool = copy_slips = 0
    for q in questions:
        turn = ChatSession(engine, tools, config=chat_cfg).respond(q["question"])
        calc = [c for c in turn["tool_calls"] if c["name"] == "calculator"]
        called += bool(calc)
        right_call = any(o == q["answer"] for o in turn["tool_outputs"])
        call_correct += right_call
        right_answer = matches(turn["content"], q["answer"])
        with_tool += right_answer
        copy_slips += right_call and not right_answer
        if len(samples) < cfg.samples + 2:
            samples.append({"user": q["question"], "assistant": _show(turn)})
        bar.update()
        direct = ChatSession(engine, {}, config=chat_cfg).respond(q["question"], prefill="The answer is ")
        without_tool += matches(direct["messages"][0]["content"], q["answer"])
        bar.update()
    bar.close()
    n = max(cfg.arithmetic, 1)
    result = {
        "checkpoint": str(checkpoint),
        "format_compliance": ended / cfg.prompts if cfg.prompts else None,  # None: not measured (--prompts 0)
        "tool_call_rate": called / n,
        "tool_call_accuracy": call_correct / n,  # the calculator returned the right value (a well-formed call)
        "accuracy_with_tool": with_tool / n,
        "accuracy_with_tool_wilson95": list(wilson_interval(with_tool, cfg.arithmetic)),
        # the calculator returned the right value but the final answer does not hold it: the result was miscopied
        "result_copy_errors": copy_slips / n,
        "accuracy_without_tool": without_tool / n,
        "masked_val_loss": masked_val_loss(engine.model, tok, held[:cfg.val_conversations]),
        "samples": samples,
        "config": asdict(cfg),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return result


def _interval(bounds: list[float] | None) -> str:
    return "" if not bounds else f" (95% Wilson {100 * bounds[0]:.1f}-{100 * bounds[1]:.1f}%)"


def format_report(r: dict[str, Any]) -> str:
    compliance = r["format_compliance"]
    lines = [f"SFT evaluation of {r['checkpoint']}",
             "  format compliance (answers ending with <|end|>): "
             + ("not measured (--prompts 0)" if compliance is None else f"{100 * compliance:.1f}%"),
             f"  calculator call rate on held-out arithmetic:    {100 * r['tool_call_rate']:.1f}%",
             f"  calls that computed the right value:            {100 * r['tool_call_accuracy']:.1f}%",
             f"  final-answer accuracy with the tool:            {100 * r['accuracy_with_tool']:.1f}%"
             + _interval(r.get("accuracy_with_tool_wilson95")),
             f"  right call, result miscopied into the answer:   {100 * r.get('result_copy_errors', 0.0):.1f}%",
             f"  final-answer accuracy without the tool:         {100 * r['accuracy_without_tool']:.1f}%",
             f"  masked validation loss (assistant tokens):      {r['masked_val_loss']:.4f}",
             "", "  sample conversations:"]
    width = 60
    for s in r["samples"]:
        lines.append(f"  | user      | {s['user'][:width]}")
        lines.append(f"  | assistant | {s['assistant'][:2 * width]}")
        lines.append("  |")
    return "\n".join(lines)


def save_report(r: dict[str, Any], path: str | Path) -> None:
    write_json(path, r)
