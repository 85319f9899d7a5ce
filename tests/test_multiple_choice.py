"""Multiple choice by log-likelihood: the batched scores against a hand computation, the formats, the aggregate,
the generated stdlib tasks and the CLI."""

import json
import math

import pytest
import torch

from lmforge.evaluation.multiple_choice import (MCItem, aggregate, centred, encode_pair, evaluate_items, read_items,
                                                score_sequences)
from lmforge.evaluation.stdlib_tasks import stdlib_items
from lmforge.model import GPT, GPTConfig
from lmforge.utils import LmforgeError


class CharTokenizer:
    """One token per character (ids 2..), <|bos|> = 1: token counts are visible in the test."""

    bos_id = 1

    def encode(self, text: str) -> list[int]:
        return [2 + (ord(c) % 30) for c in text]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=32, n_layer=1, n_head=2, n_embd=16, block_size=24)).eval()


def by_hand(model, ctx: list[int], opt: list[int]) -> float:
    """Unbatched: the log-softmax written out (logit - log sum exp) at each option position, summed."""
    seq = ctx + opt
    with torch.no_grad():
        logits, _ = model(torch.tensor([seq[:-1]]))
    total = 0.0
    for k, target in enumerate(opt):
        row = logits[0, len(ctx) - 1 + k].double()
        total += float(row[target] - torch.log(torch.exp(row).sum()))
    return total


def test_batched_scores_equal_the_hand_computation(model):
    pairs = [([1, 5, 6, 7], [8, 9]), ([1, 3], [4, 4, 4, 4, 4]), ([1, 2, 3, 4, 5, 6, 7, 8, 9], [10]),
             ([1, 11], [12, 13, 14])]
    batched = score_sequences(model, pairs, batch_size=3)  # rows of different lengths share a padded batch
    for (got, greedy), (ctx, opt) in zip(batched, pairs):
        assert got == pytest.approx(by_hand(model, ctx, opt), abs=1e-4)
        with torch.no_grad():
            logits, _ = model(torch.tensor([(ctx + opt)[:-1]]))
        assert greedy == (logits[0, len(ctx) - 1:].argmax(-1).tolist() == opt)
    # a continuation made of the model's own argmax tokens is greedy
    ctx, opt = [1, 5, 6], []
    for _ in range(3):
        with torch.no_grad():
            opt.append(int(model(torch.tensor([ctx + opt]))[0][0, -1].argmax()))
    assert score_sequences(model, [(ctx, opt)])[0][1] is True


def test_normalisations_and_predictions(model):
    tok = CharTokenizer()
    item = MCItem("t", "ab ", ["cd", "efgh", "ij"], answer=1)
    [result] = evaluate_items(model, tok, [item], batch_size=2)
    sums = [by_hand(model, *encode_pair(tok, item.context, c, 24)) for c in item.choices]
    # the context's trailing space moves onto each option: " cd" is 3 tokens and 2 + 1 bytes
    assert encode_pair(tok, "ab ", "cd", 24) == ([1] + tok.encode("ab"), tok.encode(" cd"))
    assert result["scores"]["sum"] == pytest.approx(sums, abs=1e-4)
    assert result["scores"]["token"] == pytest.approx([s / n for s, n in zip(sums, (3, 5, 3))], abs=1e-4)
    assert result["scores"]["byte"] == pytest.approx([s / n for s, n in zip(sums, (2, 4, 2))], abs=1e-4)
    for k in ("sum", "token", "byte"):
        assert result["correct"][k] == (max(range(3), key=lambda i: result["scores"][k][i]) == 1)


def test_long_context_keeps_its_end(model):
    ctx, opt = encode_pair(CharTokenizer(), "x" * 40 + "yz", "abc", 24)
    assert len(ctx) + len(opt) == 25 and ctx[-2:] == CharTokenizer().encode("yz")


@pytest.mark.parametrize("record,expected", [
    ({"context": "2+2=", "choices": ["4", "5"], "answer": 0}, MCItem("f", "2+2=", ["4", "5"], 0)),
    ({"ctx": "He opens", "endings": ["the door.", "a cat."], "label": "0", "activity_label": "x"},
     MCItem("f", "He opens", [" the door.", " a cat."], 0)),
    ({"question": {"stem": "Sky?", "choices": [{"text": "red", "label": "A"}, {"text": "blue", "label": "B"}]},
      "answerKey": "B"}, MCItem("f", "Question: Sky?\nAnswer:", [" red", " blue"], 1)),
    ({"question": "Sky?", "choices": {"text": ["red", "blue"], "label": ["1", "2"]}, "answerKey": "2"},
     MCItem("f", "Question: Sky?\nAnswer:", [" red", " blue"], 1)),
    ({"question": "Sky?", "choices": ["red", "blue"], "answer": "B", "subject": "astronomy"},
     MCItem("mmlu_astronomy", "Question: Sky?\nAnswer:", [" red", " blue"], 1)),
    ({"goal": "Dry a towel", "sol1": "hang it", "sol2": "soak it", "label": 0},
     MCItem("f", "Question: Dry a towel\nAnswer:", [" hang it", " soak it"], 0)),
])
def test_formats_map_their_fields(tmp_path, record, expected):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert read_items(path) == [expected]


@pytest.mark.parametrize("line,culprit", [
    ('{"context": "a", "choices": ["x"], "answer": 0}', "line 2"),
    ('{"context": "a", "choices": ["x", "y"], "answer": 5}', "line 2"),
    ('{"foo": 1}', "line 2"),
    ("not json", "line 2"),
])
def test_bad_lines_are_refused_with_their_number(tmp_path, line, culprit):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": "a", "choices": ["x", "y"], "answer": 0}\n' + line + "\n")
    with pytest.raises(LmforgeError, match=culprit):
        read_items(path, fmt="lmforge")


def test_aggregate_is_centred_accuracy_averaged_over_tasks():
    rows = [{"task": "a", "choices": 4, "correct": {"sum": c, "token": c, "byte": c}} for c in (1, 1, 0, 0)]
    rows += [{"task": "b", "choices": 2, "correct": {"sum": c, "token": c, "byte": c}} for c in (1, 1, 1, 0)]
    s = aggregate(rows, "byte", samples=200)
    assert s["tasks"]["a"]["centred"] == pytest.approx((0.5 - 0.25) / 0.75)
    assert s["core"] == pytest.approx((centred(0.5, 0.25) + centred(0.75, 0.5)) / 2)
    assert s["core_interval"][0] <= s["core"] <= s["core_interval"][1]


def test_stdlib_tasks_are_deterministic_and_true():
    import importlib
    import inspect

    items = stdlib_items(count=30, seed=3)
    assert items == stdlib_items(count=30, seed=3) and items != stdlib_items(count=30, seed=4)
    for item in items:
        assert len(set(item.choices)) == len(item.choices) == 4
        if item.task == "stdlib_signature":
            module, _, name = item.context.rpartition(".")
            fn = getattr(importlib.import_module(module), name)
            assert item.choices[item.answer] == str(inspect.signature(fn))
        else:
            name = item.context.split()[3]
            assert hasattr(importlib.import_module(item.choices[item.answer].strip()), name)


def test_cli_scores_a_checkpoint(tmp_path):
    from hostile import assert_refused, run_cli

    from lmforge.checkpoint import save_model
    from lmforge.tokenizer import Tokenizer

    Tokenizer.train(["def dumps(obj): return json text of the module shutil copy2"] * 20, 270).save(tmp_path / "tok")
    torch.manual_seed(0)
    save_model(tmp_path / "ckpt", GPT(GPTConfig(vocab_size=270, n_layer=1, n_head=2, n_embd=16, block_size=64)),
               tmp_path / "tok")
    (tmp_path / "p.jsonl").write_text(json.dumps({"goal": "dry", "sol1": "hang", "sol2": "soak", "label": 0}) + "\n")
    out = run_cli(["eval", "mc", "--checkpoint", str(tmp_path / "ckpt"), "--tasks", str(tmp_path / "p.jsonl"),
                   "--builtin", "stdlib_module", "--count", "6", "--bootstrap", "50",
                   "--json", str(tmp_path / "r.json")])
    assert out.code == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["summary"]["tasks"]) == {"p", "stdlib_module"} and len(report["items"]) == 7
    assert "CORE-like" in out.stdout and math.isfinite(report["summary"]["core"])
    assert_refused(run_cli(["eval", "mc", "--checkpoint", str(tmp_path / "ckpt"), "--tasks",
                            str(tmp_path / "none.jsonl")]), "none.jsonl")
    assert_refused(run_cli(["eval", "mc", "--checkpoint", str(tmp_path / "ckpt"), "--batch-size", "0"]),
                   "--batch-size")


def test_stdlib_tasks_do_not_depend_on_what_the_process_imported(monkeypatch):
    """torch replaces `inspect.getfile` and drops a function from the pool read in-process (297 -> 296 found): the
    pool is read in a clean interpreter, so a bare process and this one (torch imported, `inspect` patched) agree."""
    import inspect
    import subprocess
    import sys

    monkeypatch.setattr(inspect, "signature", lambda obj: "(patched)")
    script = ("import json, sys; from lmforge.evaluation.stdlib_tasks import stdlib_items; "
              "assert 'torch' not in sys.modules; "
              "print(json.dumps([[i.context, i.choices, i.answer] for i in stdlib_items(count=300, seed=5)]))")
    bare = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    here = [[i.context, i.choices, i.answer] for i in stdlib_items(count=300, seed=5)]
    assert json.loads(bare) == here
