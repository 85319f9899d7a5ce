"""Rewards for RL: functions `(prompt_ids, response_ids, completion, example) -> float`, summed per response.

A response's reward is the sum of every reward function's value, so the verifiable arithmetic check, the reward
model and the penalty for rambling combine by listing them (`build_rewards`). Each sees the exact sampled ids (the
reward model scores those, never re-tokenised text), the final assistant text parsed from them, and the prompt's
record (`example`: for arithmetic, the expression and the expected answer).

The arithmetic check is stricter than `lmforge eval sft`'s "the answer holds the right number": only the LAST
number of the final answer counts, so a policy cannot collect reward by listing several candidates (every answer
the default SFT data teaches ends with its result: "37 * 48 = 1776.", "The answer is 1776."). The expected value
comes from the calculator (`lmforge.inference.tools.calculate`) over the prompt's expression.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from lmforge.inference.tools import CalculatorError, calculate
from lmforge.utils import LmforgeError

REWARD_NAMES = ("arithmetic", "tool_call", "reward_model")
RewardFn = Callable[[list[int], list[int], str, dict[str, Any]], float]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in `text` (thousands separators ignored), or None."""
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def _calculator_value(example: dict[str, Any]) -> str | None:
    """The calculator's output for the prompt's expression (None when the record has none it accepts)."""
    try:
        return calculate(example["expression"])
    except (KeyError, CalculatorError):
        return None


def arithmetic_reward(prompt_ids: list[int], response_ids: list[int], completion: str,
                      example: dict[str, Any]) -> float:
    """1.0 when the final answer's last number equals the calculator's value of the prompt's expression (relative
    tolerance 1e-4, for rounded decimals), else 0.0."""
    expected = _calculator_value(example)
    if expected is None:
        return 0.0
    got = last_number(completion)
    return float(got is not None and math.isclose(got, float(expected), rel_tol=1e-4, abs_tol=1e-6))


def tool_call_reward(tokenizer: Any, weight: float) -> RewardFn:
    """`weight` when one of the response's calculator outputs equals the calculator's value of the prompt's
    expression (the call was well formed and copied the question right), else 0.0. Still verifiable: it is the
    arithmetic check applied to the tool's output instead of the final sentence.

    Why: the SFT model's wrong answers are two different copying slips, the question's expression into the call
    and the tool's result into the final sentence. The final-answer reward alone scores both 0, so a group in
    which every response slips somewhere teaches nothing; this partial credit separates a right call with a bad
    copy from a wrong call, so the policy learns each copy on its own."""
    from lmforge.tokenizer.chat_format import parse_assistant

    def credit(prompt_ids: list[int], response_ids: list[int], completion: str, example: dict[str, Any]) -> float:
        expected = _calculator_value(example)
        outputs = parse_assistant(tokenizer, response_ids)["tool_outputs"]
        return weight if expected is not None and any(out.strip() == expected for out in outputs) else 0.0

    return credit


def unfinished_penalty(value: float, end_id: int) -> RewardFn:
    """-value for a response that never reached the end-of-turn token (cut by the token budget or the context):
    without it, a policy that rambles past the budget loses nothing for it."""

    def penalty(prompt_ids: list[int], response_ids: list[int], completion: str, example: dict[str, Any]) -> float:
        return 0.0 if end_id in response_ids else -value

    return penalty


def reward_model_reward(checkpoint: str, end_id: int, device: str = "cpu") -> RewardFn:
    """The trained reward model (`lmforge reward train`) as a reward function: its scalar read at the end-of-turn
    token of prompt + response, over the exact sampled ids. A response is cut after its first `<|end|>`; one that
    never reached it is scored as it stands (the reward model reads it at an `<|end|>` it appends), and pays the
    unfinished penalty besides."""
    from lmforge.posttrain.reward import RewardModel

    model = RewardModel.from_checkpoint(checkpoint, device=device)

    def score(prompt_ids: list[int], response_ids: list[int], completion: str, example: dict[str, Any]) -> float:
        cut = response_ids[:response_ids.index(end_id) + 1] if end_id in response_ids else response_ids
        return float(model.score([list(prompt_ids) + list(cut)])[0])

    return score


def build_rewards(names: list[str], end_id: int, unfinished_value: float, reward_model: str | None = None,
                  device: str = "cpu", tokenizer: Any = None, tool_call_weight: float = 0.5
                  ) -> list[tuple[str, RewardFn]]:
    """The named reward functions (`arithmetic`, `tool_call` (needs the tokenizer), `reward_model`), plus the
    unfinished penalty when its value is not 0."""
    out: list[tuple[str, RewardFn]] = []
    for name in names:
        if name == "arithmetic":
            out.append((name, arithmetic_reward))
        elif name == "tool_call":
            if tokenizer is None:
                raise LmforgeError("--rewards tool_call needs the policy's tokenizer to read the tool outputs")
            out.append((name, tool_call_reward(tokenizer, tool_call_weight)))
        elif name == "reward_model":
            if reward_model is None:
                raise LmforgeError("--rewards reward_model needs --reward-model CHECKPOINT")
            out.append((name, reward_model_reward(reward_model, end_id, device)))
        else:
            raise LmforgeError(f"--rewards: unknown reward {name!r} (known: {', '.join(REWARD_NAMES)})")
    if unfinished_value:
        out.append(("unfinished", unfinished_penalty(unfinished_value, end_id)))
    return out
