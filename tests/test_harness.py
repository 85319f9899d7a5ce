"""The lm-evaluation-harness adapter: a task from a local YAML file runs offline through lm-eval's own evaluator
and agrees with `lmforge eval mc` on the same items. Skipped where lm-eval (an optional dependency) is absent."""

import json
from types import SimpleNamespace

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lmforge.checkpoint import save_model  # noqa: E402
from lmforge.evaluation.harness import LmforgeLM, run_harness  # noqa: E402
from lmforge.evaluation.multiple_choice import MCItem, evaluate_items  # noqa: E402
from lmforge.model import GPT, GPTConfig  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402

ITEMS = [{"context": f"item {i}: the word after {w} is", "choices": ["red", "blue", "green"], "answer": i % 3}
         for i, w in enumerate("apple river stone cloud module string tree house".split())]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    Tokenizer.train([json.dumps(ITEMS)] * 10, vocab_size=300).save(root / "tok")
    torch.manual_seed(0)
    save_model(root / "ckpt", GPT(GPTConfig(vocab_size=300, n_layer=1, n_head=2, n_embd=16, block_size=32)),
               root / "tok")
    return root / "ckpt"


def test_local_yaml_task_agrees_with_eval_mc(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ITEMS))
    (tmp_path / "local_mc.yaml").write_text(
        "task: lmforge_local_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'items.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    results = run_harness(checkpoint, ["lmforge_local_mc"], include_path=tmp_path, batch_size=4)
    ours = evaluate_items(LmforgeLM(checkpoint).model, LmforgeLM(checkpoint).tokenizer,
                          [MCItem("t", r["context"], [" " + c for c in r["choices"]], r["answer"]) for r in ITEMS])
    expected = sum(r["correct"]["sum"] for r in ours) / len(ours)
    assert results["lmforge_local_mc"]["acc,none"] == pytest.approx(expected)


def test_rolling_loglikelihood_is_the_text_log_probability(checkpoint):
    lm = LmforgeLM(checkpoint)
    text = "the word after stone is green"
    ids = [lm.tokenizer.bos_id] + lm.tokenizer.encode(text)
    assert len(ids) <= 32
    with torch.no_grad():
        logits, _ = lm.model(torch.tensor([ids[:-1]]))
    expected = float(torch.log_softmax(logits[0], -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
    [got] = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))])
    assert got == pytest.approx(expected, abs=1e-4)


def test_generate_until_stops_at_the_stop_string(checkpoint):
    lm = LmforgeLM(checkpoint)
    [free] = lm.generate_until([SimpleNamespace(args=("item 1:", {"max_gen_toks": 8}))])
    ascii_at = [k for k, ch in enumerate(free) if k > 0 and ch.isascii() and ch.isprintable()]
    assert ascii_at, free  # the greedy continuation of this seed's model has a printable character to stop at
    stop = free[ascii_at[0]]
    [cut] = lm.generate_until([SimpleNamespace(args=("item 1:", {"max_gen_toks": 8, "until": [stop]}))])
    assert cut == free[:free.index(stop)]


def test_cli_runs_a_local_task(checkpoint, tmp_path, monkeypatch):
    from hostile import run_cli

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ITEMS))
    (tmp_path / "t.yaml").write_text(
        "task: lmforge_cli_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'items.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    out = run_cli(["eval", "harness", "--checkpoint", str(checkpoint), "--tasks", "lmforge_cli_mc",
                   "--include-path", str(tmp_path), "--json", str(tmp_path / "r.json")])
    assert out.code == 0, out.stderr
    assert "lmforge_cli_mc: acc" in out.stdout
    assert "acc,none" in json.loads((tmp_path / "r.json").read_text())["lmforge_cli_mc"]
