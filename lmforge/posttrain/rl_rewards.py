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

RewardFn = Callable[[list[int], list[int], str, dict[str, Any]], float]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in `text` (thousands separators ignored), or None."""
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def arithmetic_reward(prompt_ids: list[int], response_ids: list[int], completion: str,
                      example: dict[str, Any]) -> float:
    """1.0 when the final answer's last number equals the calculator's value of the prompt's expression (relative
    tolerance 1e-4, for rounded decimals), else 0.0."""
    try:
        expected = float(calculate(example["expression"]))
    except (KeyError, CalculatorError):
        return 0.0
    got = last_number(completion)
    return float(got is not None and math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-6))


def unfinished_penalty(value: float, end_id: int) -> RewardFn:
    """-value for a response that never reached the end-of-turn token (cut by the token budget or the context):
    without it, a policy that rambles past the budget loses nothing for it."""

    def penalty(prompt_ids: list[int], response_ids: list[int], completion: str, example: dict[str, Any]) -> float:
        return 0.0 if end_id in response_ids else -value

    return penalty


def build_rewards(names: list[str], end_id: int, unfinished_value: float) -> list[tuple[str, RewardFn]]:
    """The named reward functions (`arithmetic`), plus the unfinished penalty when its value is not 0."""
    out: list[tuple[str, RewardFn]] = []
    for name in names:
        if name == "arithmetic":
            out.append((name, arithmetic_reward))
        else:
            raise LmforgeError(f"--rewards: unknown reward {name!r} (known: arithmetic)")
    if unfinished_value:
        out.append(("unfinished", unfinished_penalty(unfinished_value, end_id)))
    return out
