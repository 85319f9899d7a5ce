"""Conversation loaders (OpenAI, Alpaca, ShareGPT, hh-rlhf) and the generated default SFT data."""

import gzip
import json

import pytest

from lmforge.inference.tools import calculate
from lmforge.posttrain.datasets import LoadReport, load_conversations, parse_hh_dialogue, read_conversations
from lmforge.posttrain.default_data import (DefaultDataConfig, collect_doc_facts, generate_default_conversations,
                                            heldout_arithmetic)
from lmforge.utils import LmforgeError

ROWS = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"messages": [{"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": None,
                   "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "2+2"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "4"},
                  {"role": "assistant", "content": "4"}]},
    {"instruction": "Add the numbers.", "input": "1 and 2", "output": "3"},
    {"instruction": "Say hi", "output": "hi"},
    {"conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    {"chosen": "\n\nHuman: How are you?\n\nAssistant: Fine.\n\nHuman: Sure?\n\nAssistant: Yes.", "rejected": "x"},
]


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_every_format_loads(tmp_path):
    path = _write(tmp_path / "mix.jsonl", [json.dumps(r) for r in ROWS])
    convs = list(read_conversations(path))
    assert len(convs) == len(ROWS)
    assert convs[1][1]["tool_calls"] == [{"name": "calculator", "arguments": "2+2"}]
    assert convs[1][2] == {"role": "tool", "content": "4", "name": "calculator"}
    assert convs[2] == [{"role": "user", "content": "Add the numbers.\n\n1 and 2"}, {"role": "assistant", "content": "3"}]
    assert convs[4][0] == {"role": "system", "content": "be nice"}
    assert [m["role"] for m in convs[5]] == ["user", "assistant", "user", "assistant"]
    assert convs[5][-1]["content"] == "Yes."
    # the same rows as a .json array and as .jsonl.gz
    (tmp_path / "arr.json").write_text(json.dumps(ROWS))
    with gzip.open(tmp_path / "mix.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in ROWS))
    assert list(read_conversations(tmp_path / "arr.json")) == convs
    assert list(read_conversations(tmp_path / "mix.jsonl.gz")) == convs


def test_bad_rows_are_reported_with_line_numbers_and_skipped(tmp_path):
    lines = [json.dumps(ROWS[0]), "{broken json", json.dumps({"instruction": "no output"}), "",
             json.dumps({"messages": [{"role": "tool", "content": "5"}]}), json.dumps(ROWS[2]), "[1, 2]",
             json.dumps({"conversations": [{"from": "alien", "value": "x"}]}),
             json.dumps({"chosen": "no turns here"}), json.dumps({"messages": [{"role": "user", "content": "q"}]})]
    path = _write(tmp_path / "bad.jsonl", lines)
    report = LoadReport(str(path))
    convs = list(read_conversations(path, report))
    assert len(convs) == 2 and report.kept == 2 and report.rows == 9
    assert [line for line, _ in report.bad] == [2, 3, 5, 7, 8, 9, 10]
    reasons = dict(report.bad)
    assert "invalid JSON" in reasons[2] and "output" in reasons[3] and "messages[0]" in reasons[5]
    assert "alien" in reasons[8] and "no assistant" in reasons[10]
    assert f"{path}:2:" in report.summary()


def test_a_file_without_any_usable_row_is_an_error(tmp_path):
    path = _write(tmp_path / "none.jsonl", ["{}", "3"])
    with pytest.raises(LmforgeError, match="none.jsonl: no usable conversation"):
        load_conversations([path], verbose=False)
    with pytest.raises(LmforgeError, match="not found"):
        load_conversations([tmp_path / "missing.jsonl"])


def test_hh_dialogue_parsing():
    msgs = parse_hh_dialogue("\n\nHuman: a\nb\n\nAssistant: c")
    assert msgs == [{"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c"}]
    with pytest.raises(LmforgeError):
        parse_hh_dialogue("\n\nHuman: only a question")


def test_shared_alignment_files(shared_data):
    hh = shared_data / "alignment" / "preference" / "hh_rlhf_harmless_base_test.jsonl.gz"
    report = LoadReport(str(hh))
    convs = list(read_conversations(hh, report))
    assert report.rows == 2312 and len(convs) > 2200 and all(line > 0 for line, _ in report.bad)
    assert all(c[0]["role"] == "user" and c[-1]["role"] == "assistant" for c in convs)
    seed = list(read_conversations(shared_data / "alignment" / "sft" / "self_instruct_seed_tasks.jsonl"))
    assert len(seed) == 175 and all(len(c) == 2 for c in seed)


def test_default_data_is_seeded_varied_and_valid():
    facts = collect_doc_facts()
    assert len(facts) > 300 and any(f.name == "json.dumps" for f in facts)
    cfg = DefaultDataConfig(n=600, seed=7)
    a = list(generate_default_conversations(cfg, facts))
    assert a == list(generate_default_conversations(cfg, facts))
    assert a != list(generate_default_conversations(DefaultDataConfig(n=600, seed=8), facts))
    calls = [(m, c) for c in a for m in c if m.get("tool_calls")]
    assert len(calls) > 60
    for msg, conv in calls:  # every tool output is what the real calculator returns for the call
        i = conv.index(msg)
        assert conv[i + 1]["content"] == calculate(msg["tool_calls"][0]["arguments"])
    text = json.dumps(a)
    assert "lmforge" in text and "rm -rf" in text and ("won't" in text or "can't" in text)
    assert sum(len(c) > 2 and c[0]["role"] != "system" for c in a) > 50  # multi-turn ones
    held = heldout_arithmetic(50)
    train_questions = {c[0]["content"] for c in a}
    assert sum(h["question"] in train_questions for h in held) < 5


def test_doc_facts_hold_nothing_that_differs_between_runs():
    """Signatures once carried memory addresses and the venv's path, so two speedruns trained on different data."""
    import re
    import sys

    text = json.dumps([f.__dict__ for f in collect_doc_facts()])
    assert not re.search(r"0x[0-9a-f]{6,}", text)
    assert sys.executable not in text
    assert "platform.architecture(executable=sys.executable" in text


def test_sft_data_cli_previews_and_writes(tmp_path, capsys):
    from lmforge.cli import main

    assert main(["sft", "data", "--preview", "3", "--seed", "5"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("--- conversation") == 3 and "user:" in shown and "assistant:" in shown
    out = tmp_path / "sft.jsonl"
    assert main(["sft", "data", "--out", str(out), "--n", "40", "--seed", "5"]) == 0
    convs = list(read_conversations(out))
    assert len(convs) == 40
    assert convs == list(generate_default_conversations(DefaultDataConfig(n=40, seed=5)))
    assert main(["sft", "--out", str(tmp_path / "x")]) == 2  # no --checkpoint: a one-line error, not a traceback
    assert "needs --checkpoint" in capsys.readouterr().err


def test_arithmetic_split_keeps_evaluation_questions_out_of_training():
    """Evaluation questions come from one side of a split of the expression space (spacing ignored), the SFT
    data's and RL's from the other, so no held-out question is ever trained on, whatever the seeds."""
    import random

    from lmforge.posttrain.default_data import arithmetic_expression, arithmetic_questions, is_heldout_expression

    held = heldout_arithmetic(300, seed=11)
    assert all(is_heldout_expression(q["expression"]) for q in held)
    assert all(is_heldout_expression(q["expression"].replace(" ", "")) for q in held)
    rng = random.Random(5)
    train = {"".join(arithmetic_expression(rng).split()) for _ in range(3000)}
    train |= {"".join(q["expression"].split()) for s in range(40) for q in arithmetic_questions(8, s, heldout=False)}
    assert not train & {"".join(q["expression"].split()) for q in held}
    share = sum(is_heldout_expression(f"{a} * {b}") for a in range(100) for b in range(40)) / 4000
    assert 0.08 < share < 0.12  # the split keeps about one expression in ten for evaluation

