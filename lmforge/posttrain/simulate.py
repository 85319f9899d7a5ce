"""Simulated labelers: deterministic programs that judge two responses the way the default's tasks define "better".

The rules, in the order the `default` labeler applies them (each named labeler applies only its own):

- `refusal`: on a request the model should refuse (kind "refusal"), a refusal beats compliance; two compliances
  are both bad.
- `arithmetic`: on an arithmetic prompt, the answer whose last number equals the calculator's result beats one
  whose does not (the expression comes from the prompt's record, else from the user's text); two wrong answers
  are both bad.
- `stop`: an answer that ended with the end-of-turn token beats one that rambled into the token budget.
- `topic`: the answer sharing more content words with the prompt beats the other (by a margin of `TOPIC_MARGIN`).

Nothing decided: a tie. `noise` flips a decided A/B verdict with that probability, drawn from a generator seeded by
(seed, item, the two samples), so the same labeler gives the same verdicts on every run. The refusal and arithmetic
rules are verifiable: `gold_verdict` uses them (without noise) as the known answer of gold items.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable

from lmforge.inference.tools import CalculatorError, calculate
from lmforge.utils import LmforgeError

# A verdict compares response `first` with response `second` (as given): which is better, or neither.
FIRST, SECOND, TIE, BOTH_BAD = "first", "second", "tie", "both_bad"
TOPIC_MARGIN = 0.1
_REFUSAL = re.compile(r"\b(i won't|i will not|i can't|i cannot|i can not|sorry|i refuse|i'm not able|i am not able|"
                      r"i only run|not something i can|i must decline)\b|^no[.!,]", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_EXPRESSION = re.compile(r"[\d(][\d\s.+\-*/%()^]*[\d)]")
_WORD = re.compile(r"[a-z][a-z0-9_.]{2,}")
_STOPWORDS = frozenset("the and for you your what does with that this how can are was from into about".split())


def is_refusal(response: dict[str, Any]) -> bool:
    """A reply that declines: refusal wording and no tool call run."""
    return not any(m.get("role") == "tool" for m in response.get("messages", [])) \
        and bool(_REFUSAL.search(response.get("text", "").strip()))


def expected_answer(record: dict[str, Any]) -> float | None:
    """The calculator's result for an arithmetic prompt (its recorded expression, else one found in the user's
    last message); None when the prompt holds no expression the calculator accepts."""
    expression = record.get("expression")
    if expression is None:
        if record.get("kind") not in ("arithmetic", "other", None):
            return None
        found = [e for e in _EXPRESSION.findall(record["prompt"][-1]["content"]) if re.search(r"[+\-*/%^]", e)]
        if not found:
            return None
        expression = max(found, key=len)
    try:
        return float(calculate(expression))
    except CalculatorError:
        return None


def final_number(text: str) -> float | None:
    numbers = _NUMBER.findall(text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def is_correct(response: dict[str, Any], expected: float) -> bool:
    got = final_number(response.get("text", ""))
    return got is not None and abs(got - expected) <= 1e-6 * max(1.0, abs(expected))


def topic_overlap(record: dict[str, Any], response: dict[str, Any]) -> float:
    """Share of the prompt's content words that the response uses."""
    words = {w.strip(".") for w in _WORD.findall(record["prompt"][-1]["content"].lower())} - _STOPWORDS
    if not words:
        return 0.0
    said = {w.strip(".") for w in _WORD.findall(response.get("text", "").lower())}
    return len(words & said) / len(words)


def _by(good_a: bool, good_b: bool, both_bad_when_neither: bool) -> str | None:
    if good_a != good_b:
        return FIRST if good_a else SECOND
    if not good_a and both_bad_when_neither:
        return BOTH_BAD
    return None


def rule_refusal(record: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> str | None:
    if record.get("kind") != "refusal":
        return None
    return _by(is_refusal(a), is_refusal(b), both_bad_when_neither=True)


def rule_arithmetic(record: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> str | None:
    expected = expected_answer(record) if record.get("kind") != "refusal" else None
    if expected is None:
        return None
    return _by(is_correct(a, expected), is_correct(b, expected), both_bad_when_neither=True)


def rule_stop(record: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> str | None:
    return _by(a.get("finish_reason") == "stop", b.get("finish_reason") == "stop", both_bad_when_neither=False)


def rule_topic(record: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> str | None:
    diff = topic_overlap(record, a) - topic_overlap(record, b)
    if abs(diff) <= TOPIC_MARGIN:
        return None
    return FIRST if diff > 0 else SECOND


Rule = Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], "str | None"]
LABELERS: dict[str, tuple[Rule, ...]] = {
    "default": (rule_refusal, rule_arithmetic, rule_stop, rule_topic),
    "refusal": (rule_refusal,), "arithmetic": (rule_arithmetic,), "stop": (rule_stop,), "topic": (rule_topic,),
}


def gold_verdict(record: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The known answer of a pair that a verifiable check decides (refusal, calculator); None otherwise."""
    for rule in (rule_refusal, rule_arithmetic):
        verdict = rule(record, a, b)
        if verdict is not None:
            return verdict
    return None


@dataclass(frozen=True)
class SimulatedLabeler:
    """`verdict(record, i, j)` compares responses i and j of one sample record."""

    name: str = "default"
    noise: float = 0.0  # chance of flipping a decided verdict
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in LABELERS:
            raise LmforgeError(f"--simulate must be one of {', '.join(LABELERS)} (got {self.name!r})")
        if not 0.0 <= self.noise <= 1.0:
            raise LmforgeError(f"--noise must be in [0, 1] (got {self.noise!r})")

    def verdict(self, record: dict[str, Any], i: int, j: int) -> str:
        a, b = record["responses"][i], record["responses"][j]
        verdict = TIE
        for rule in LABELERS[self.name]:
            decided = rule(record, a, b)
            if decided is not None:
                verdict = decided
                break
        rng = random.Random(f"{self.seed}:{record['item']}:{i}:{j}")
        if verdict in (FIRST, SECOND) and rng.random() < self.noise:
            verdict = SECOND if verdict == FIRST else FIRST
        return verdict
