"""Preference pairs: the one record every preference stage reads (reward model, DPO) and every source writes
(`lmforge label export`, the simulated labelers, the loaders of existing data).

A pair is one JSON object per line (see DEVELOPERS.md, "Preference pairs")::

    {"prompt": [{"role": "system", "content": "..."}, {"role": "user", "content": "What is 2+3?"}],
     "chosen": "2+3 = 5.", "rejected": "It is 6.",
     "chosen_ids": [..], "rejected_ids": [..],                 # optional: the ids the model sampled
     "meta": {...}}                                            # optional: source, annotator, generation settings

- `prompt` is a chat conversation in `chat_format`'s schema that a reply can follow: it ends with a user message
  (an optional system message first; earlier user/assistant turns for multi-turn data).
- `chosen` / `rejected` are the assistant's reply as text (no special tokens). They differ.
- `chosen_ids` / `rejected_ids`, when present, are exactly the token ids the model sampled after
  `render_for_completion(tok, prompt)`, ending with `<|end|>` when the reply finished (a reply cut at the token
  budget has no `<|end|>`). Consumers that score a pair with the model that sampled it must use these ids rather
  than re-tokenising the text (tool calls and their outputs live only in the ids). Both or neither are given.
- `meta` is free-form JSON; `lmforge label export` puts the comparison's provenance there (sample folder, item,
  sampling settings and seeds, annotator, choice), loaders put their source file and line.

`load_pairs(path)` reads this format and the foreign ones a stage may be pointed at, detected per row: hh-rlhf
`{"chosen": dialogue, "rejected": dialogue}` (split at the last "\\n\\nAssistant:") and OpenAI's GSM8K
`example_model_solutions` (every correct solution beats every incorrect one of the same question). A bad row is
reported with its line number and skipped, with a count at the end, so a long file does not die on one row.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from lmforge.posttrain.datasets import LoadReport, parsed_rows, parse_hh_dialogue
from lmforge.tokenizer.chat_format import validate_messages
from lmforge.utils import LmforgeError, atomic_write

Messages = list[dict[str, Any]]
HH_ASSISTANT = "\n\nAssistant:"
GSM8K_MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


@dataclass(frozen=True)
class PreferencePair:
    """One judgement: after `prompt`, the reply `chosen` is better than `rejected` (see the module docstring)."""

    prompt: Messages
    chosen: str
    rejected: str
    chosen_ids: list[int] | None = None
    rejected_ids: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_pair(self)

    def to_row(self) -> dict[str, Any]:
        """The JSON object of one line (optional fields only when set)."""
        row: dict[str, Any] = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        if self.chosen_ids is not None:
            row["chosen_ids"], row["rejected_ids"] = self.chosen_ids, self.rejected_ids
        if self.meta:
            row["meta"] = self.meta
        return row


def check_prompt(prompt: Any) -> Messages:
    """A prompt as validated messages that a reply can follow (ends with a user message); LmforgeError otherwise."""
    try:
        msgs = validate_messages(prompt)
    except LmforgeError as e:
        raise LmforgeError(f"prompt: {e}") from e
    if msgs[-1]["role"] != "user":
        raise LmforgeError(f"prompt must end with a user message, not {msgs[-1]['role']!r}")
    return msgs


def _check_ids(name: str, ids: Any) -> None:
    if not isinstance(ids, list) or not ids:
        raise LmforgeError(f"{name} must be a non-empty list of token ids")
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
        raise LmforgeError(f"{name} must hold only non-negative integers")


def check_pair(pair: PreferencePair) -> None:
    """Refuse a pair that breaks the contract, naming the field (the loaders turn this into a line report)."""
    check_prompt(pair.prompt)
    for name in ("chosen", "rejected"):
        if not isinstance(getattr(pair, name), str):
            raise LmforgeError(f"{name} must be a string, got {type(getattr(pair, name)).__name__}")
    if (pair.chosen_ids is None) != (pair.rejected_ids is None):
        raise LmforgeError("chosen_ids and rejected_ids go together: give both or neither")
    if pair.chosen_ids is not None:
        _check_ids("chosen_ids", pair.chosen_ids)
        _check_ids("rejected_ids", pair.rejected_ids)
        if pair.chosen_ids == pair.rejected_ids:
            raise LmforgeError("chosen_ids and rejected_ids are the same reply")
    elif pair.chosen == pair.rejected:
        raise LmforgeError("chosen and rejected are the same reply: a pair must compare two different answers")
    if not isinstance(pair.meta, dict):
        raise LmforgeError(f"meta must be an object, got {type(pair.meta).__name__}")


def _contract_pair(row: dict[str, Any]) -> PreferencePair:
    prompt = row["prompt"]
    if isinstance(prompt, str):  # plain-text prompts (TRL's "standard" format) are one user message
        prompt = [{"role": "user", "content": prompt}]
    unknown = set(row) - {"prompt", "chosen", "rejected", "chosen_ids", "rejected_ids", "meta"}
    if unknown:
        raise LmforgeError(f"unknown field(s) {sorted(unknown)}")
    return PreferencePair(check_prompt(prompt), row["chosen"], row["rejected"], row.get("chosen_ids"),
                          row.get("rejected_ids"), row.get("meta") or {})


def split_hh(chosen: str, rejected: str) -> tuple[Messages, str, str]:
    """(prompt messages, chosen reply, rejected reply) of an hh-rlhf pair: both dialogues share everything up to
    their last "\\n\\nAssistant:", which is the prompt; what follows it is each reply."""
    heads, replies = [], []
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str) or HH_ASSISTANT not in text:
            raise LmforgeError(f"{name} is not an hh-rlhf dialogue (no '\\n\\nAssistant:' turn)")
        head, _, reply = text.rpartition(HH_ASSISTANT)
        heads.append(head)
        replies.append(reply.strip())
    if heads[0] != heads[1]:
        raise LmforgeError("chosen and rejected dialogues differ before their last Assistant turn")
    msgs = parse_hh_dialogue(heads[0] + HH_ASSISTANT + " x")[:-1]  # parse the history with a placeholder reply
    return check_prompt(msgs), replies[0], replies[1]


def _hh_pair(row: dict[str, Any]) -> PreferencePair:
    prompt, chosen, rejected = split_hh(row["chosen"], row["rejected"])
    return PreferencePair(prompt, chosen, rejected)


def _gsm8k_pairs(row: dict[str, Any]) -> list[PreferencePair]:
    """Every (correct, incorrect) pair of one question's model solutions; identical texts count once."""
    question = row["question"]
    if not isinstance(question, str) or not question.strip():
        raise LmforgeError("question must be a non-empty string")
    good: list[str] = []
    bad: list[str] = []
    for key in GSM8K_MODELS:
        sol = row.get(key)
        if sol is None:
            continue
        if not isinstance(sol, dict) or not isinstance(sol.get("solution"), str) \
                or not isinstance(sol.get("is_correct"), bool):
            raise LmforgeError(f"{key} must be {{'is_correct': bool, 'solution': str}}")
        bucket = good if sol["is_correct"] else bad
        if sol["solution"] not in bucket:
            bucket.append(sol["solution"])
    prompt = [{"role": "user", "content": question}]
    return [PreferencePair(prompt, c, r) for c in good for r in bad if c != r]


def pairs_from_row(row: Any) -> list[PreferencePair]:
    """The pairs of one row in any supported format (a GSM8K row may give none or several)."""
    if not isinstance(row, dict):
        raise LmforgeError(f"row must be a JSON object, got {type(row).__name__}")
    try:
        if "prompt" in row:
            return [_contract_pair(row)]
        if "chosen" in row and "rejected" in row:
            return [_hh_pair(row)]
        if "question" in row and any(k in row for k in GSM8K_MODELS):
            return _gsm8k_pairs(row)
    except (KeyError, TypeError) as e:
        raise LmforgeError(f"missing or malformed field: {e!r}") from e
    raise LmforgeError(f"unknown row format (keys {sorted(row)[:6]}); expected prompt/chosen/rejected, hh-rlhf "
                       "chosen/rejected dialogues, or GSM8K model solutions")


def read_pairs(path: str | Path, report: LoadReport | None = None) -> Iterator[PreferencePair]:
    """Yield the pairs of one file (.jsonl, .jsonl.gz, .json array); bad rows go to `report` and are skipped."""
    path = Path(path)
    for line, row, pairs in parsed_rows(path, "preference file", pairs_from_row, report):
        if "prompt" not in row:  # foreign formats: say where each pair came from (held-out splits go by line)
            pairs = [replace(p, meta={**p.meta, "source": path.name, "line": line}) for p in pairs]
        yield from pairs


def load_pairs(path: str | Path, verbose: bool = True) -> list[PreferencePair]:
    """Every pair of a file; bad rows are printed to stderr with their line numbers and a count. A file without
    a single usable pair is an error naming the first problem."""
    report = LoadReport(str(path))
    pairs = list(read_pairs(path, report))
    if verbose and report.n_bad:
        print(report.summary(), file=sys.stderr)
    if not pairs:
        first = f" (first problem: line {report.bad[0][0]}: {report.bad[0][1]})" if report.bad else ""
        raise LmforgeError(f"{path}: no usable preference pair in {report.rows} rows{first}")
    return pairs


def write_pairs(pairs: list[PreferencePair], path: str | Path) -> int:
    """Write pairs as JSONL, atomically (a killed export leaves the old file or none, never half of one)."""
    with atomic_write(path) as f:
        for p in pairs:
            f.write(json.dumps(p.to_row(), ensure_ascii=False) + "\n")
    return len(pairs)
