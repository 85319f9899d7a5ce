"""Conversation loaders for the common SFT formats, all turned into the message schema of `chat_format`.

Formats, detected per row so one file may mix them:

- OpenAI `{"messages": [{"role", "content", "tool_calls"?}, ...]}` (tool calls in our short form, or OpenAI's
  `{"type": "function", "function": {"name", "arguments"}}`);
- Alpaca `{"instruction", "input"?, "output"}` and self-instruct `{"instruction", "instances": [{"input", "output"}]}`;
- ShareGPT `{"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}`;
- hh-rlhf `{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}` (SFT takes `chosen`).

Files are `.jsonl`, `.jsonl.gz` or a `.json` array. A bad row (broken JSON, a missing field, a role out of order)
is reported with its line number and skipped, so a run does not die on row 90,000; `LoadReport` keeps the count
and the first reasons.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from lmforge.tokenizer.chat_format import validate_messages
from lmforge.utils import LmforgeError

T = TypeVar("T")

Messages = list[dict[str, Any]]
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


@dataclass
class LoadReport:
    path: str
    rows: int = 0
    kept: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason), the first `keep_bad` of them
    n_bad: int = 0
    keep_bad: int = 20

    def add_bad(self, line: int, reason: str) -> None:
        self.n_bad += 1
        if len(self.bad) < self.keep_bad:
            self.bad.append((line, reason))

    def summary(self, max_lines: int = 5) -> str:
        head = f"{self.path}: {self.kept} of {self.rows} rows kept, {self.n_bad} bad"
        lines = [f"  {self.path}:{line}: {reason}" for line, reason in self.bad[:max_lines]]
        more = [f"  ... and {self.n_bad - len(lines)} more"] if self.n_bad > len(lines) else []
        return "\n".join([head] + lines + more)


def _openai(row: dict[str, Any]) -> Messages:
    msgs = row["messages"]
    if not isinstance(msgs, list):
        raise LmforgeError("messages must be a list")
    out = []
    for m in msgs:
        if not isinstance(m, dict):
            raise LmforgeError("each message must be an object")
        m = dict(m)
        if m.get("role") == "function":
            m["role"] = "tool"
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            m["tool_calls"] = [c["function"] if isinstance(c, dict) and isinstance(c.get("function"), dict) else c
                               for c in calls]
        out.append({k: v for k, v in m.items() if k in ("role", "content", "tool_calls", "name")})
    return out


def _alpaca(row: dict[str, Any]) -> Messages:
    instruction = row["instruction"]
    if "instances" in row and "output" not in row:  # self-instruct seed tasks: take the first instance
        inst = row["instances"][0]
        inp, output = inst.get("input", ""), inst["output"]
    else:
        inp, output = row.get("input", ""), row["output"]
    if not isinstance(instruction, str) or not isinstance(inp, str) or not isinstance(output, str):
        raise LmforgeError("instruction, input and output must be strings")
    user = instruction.strip() + (f"\n\n{inp.strip()}" if inp and inp.strip() else "")
    msgs: Messages = [{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": output.strip()}]


def _sharegpt(row: dict[str, Any]) -> Messages:
    turns = row["conversations"]
    if not isinstance(turns, list):
        raise LmforgeError("conversations must be a list")
    out = []
    for i, t in enumerate(turns):
        who = t.get("from") if isinstance(t, dict) else None
        if who not in SHAREGPT_ROLES:
            raise LmforgeError(f"conversations[{i}].from is {who!r}; expected one of {sorted(SHAREGPT_ROLES)}")
        out.append({"role": SHAREGPT_ROLES[who], "content": t.get("value")})
    return out


def parse_hh_dialogue(text: str) -> Messages:
    """"\\n\\nHuman: ...\\n\\nAssistant: ..." as user/assistant messages (anything before the first turn is an error)."""
    if not isinstance(text, str):
        raise LmforgeError("dialogue must be a string")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise LmforgeError("dialogue does not start with '\\n\\nHuman:'")
    msgs = [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
            for who, body in zip(parts[1::2], parts[2::2])]
    if not msgs or msgs[-1]["role"] != "assistant":
        raise LmforgeError("dialogue does not end with an Assistant turn")
    for a, b in zip(msgs, msgs[1:]):
        if a["role"] == b["role"]:
            raise LmforgeError("dialogue has two turns of the same speaker in a row")
    return msgs


def row_to_messages(row: Any) -> Messages:
    """One row of any supported format as validated messages; LmforgeError says what is wrong with it."""
    if not isinstance(row, dict):
        raise LmforgeError(f"row must be a JSON object, got {type(row).__name__}")
    try:
        if "messages" in row:
            msgs = _openai(row)
        elif "conversations" in row:
            msgs = _sharegpt(row)
        elif "chosen" in row:
            msgs = parse_hh_dialogue(row["chosen"])
        elif "instruction" in row:
            msgs = _alpaca(row)
        else:
            raise LmforgeError(f"unknown row format (keys {sorted(row)[:6]}); expected messages, conversations, "
                               "chosen or instruction")
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise LmforgeError(f"missing or malformed field: {e!r}") from e
    msgs = validate_messages(msgs)
    if not any(m["role"] == "assistant" for m in msgs):
        raise LmforgeError("no assistant message: nothing to learn")
    return msgs


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, parsed row or None, error or None); a `.json` array counts its elements as lines."""
    name = path.name.removesuffix(".gz")
    with _open_text(path) as f:
        if name.endswith(".json"):
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise LmforgeError(f"{path} is not valid JSON: {e}") from e
            if not isinstance(data, list):
                raise LmforgeError(f"{path} must hold a JSON array of rows")
            for i, row in enumerate(data, 1):
                yield i, row, None
            return
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line), None
            except json.JSONDecodeError as e:
                yield i, None, f"invalid JSON: {e.msg} at column {e.colno}"


def parsed_rows(path: str | Path, what: str, parse: Callable[[Any], T],
                report: LoadReport | None = None) -> Iterator[tuple[int, Any, T]]:
    """(line, row, parse(row)) for every good row of one file; a row that is not JSON or that `parse` refuses goes
    to `report` with its line number and is skipped, so one bad row never costs a whole data set."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{what} not found: {path}")
    report = report if report is not None else LoadReport(str(path))
    for line, row, error in read_rows(path):
        report.rows += 1
        if error is None:
            try:
                value = parse(row)
            except LmforgeError as e:
                error = str(e)
        if error is not None:
            report.add_bad(line, error)
            continue
        report.kept += 1
        yield line, row, value


def read_conversations(path: str | Path, report: LoadReport | None = None) -> Iterator[Messages]:
    """Yield the conversations of one file; bad rows go to `report` (with line numbers) and are skipped."""
    for _, _, msgs in parsed_rows(path, "SFT data file", row_to_messages, report):
        yield msgs


def load_conversations(paths: list[str | Path], verbose: bool = True) -> tuple[list[Messages], list[LoadReport]]:
    """Every conversation of several files, with one report per file (printed to stderr when rows were bad)."""
    convs: list[Messages] = []
    reports = []
    for p in paths:
        report = LoadReport(str(p))
        convs.extend(read_conversations(p, report))
        reports.append(report)
        if verbose and report.n_bad:
            print(report.summary(), file=sys.stderr)
        if report.kept == 0:
            raise LmforgeError(f"{p}: no usable conversation in {report.rows} rows"
                               + (f" (first problem: line {report.bad[0][0]}: {report.bad[0][1]})" if report.bad else ""))
    return convs, reports
