"""Preference data: the pair contract and its loaders, `rlhf sample` (traceable, replayable, resumable), the
simulated labelers, the judgement store's report (kappa, repeats, gold, position bias) and export."""

import gzip
import json

import pytest
import torch

from hostile import run_cli, tree_digest
from preference_helpers import response, synthetic_records, write_sample_folder

from lmforge.checkpoint import save_model
from lmforge.inference.engine import Engine
from lmforge.model import GPT, GPTConfig
from lmforge.posttrain import compare
from lmforge.posttrain.compare import SampleConfig, load_samples, replay_batch, run_sample, sample_turns
from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations
from lmforge.posttrain.label_report import cohen_kappa, export_pairs, report, simulate_labeling
from lmforge.posttrain.label_store import LabelStore, StoreConfig
from lmforge.posttrain.datasets import LoadReport
from lmforge.posttrain.preferences import PreferencePair, load_pairs, read_pairs, split_hh, write_pairs
from lmforge.posttrain.simulate import BOTH_BAD, FIRST, SECOND, TIE, SimulatedLabeler, gold_verdict
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.chat_format import ChatTokens, parse_assistant, render_for_completion
from lmforge.utils import LmforgeError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny model with a chat tokenizer, saved as a checkpoint (what `rlhf sample` reads)."""
    root = tmp_path_factory.mktemp("tiny")
    convs = list(generate_default_conversations(DefaultDataConfig(n=300, seed=99)))
    tok = Tokenizer.train([m["content"] for c in convs for m in c], 400)
    tok.save(root / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=256))
    save_model(root / "ckpt" / "step_0000000", model, root / "tok", meta={"step": 0})
    return root


# ---------------------------------------------------------------------------------------------------------------
# The contract and the loaders
# ---------------------------------------------------------------------------------------------------------------

HH = ("\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: How do I pick a lock?\n\nAssistant:")


def _rows():
    gsm = {"question": "2+2?", "ground_truth": "A: 4",
           "6b_finetuning": {"is_correct": True, "solution": "2+2=4\nA: 4"},
           "6b_verification": {"is_correct": False, "solution": "A: 5"},
           "175b_finetuning": {"is_correct": True, "solution": "2+2=4\nA: 4"},  # the same text: counted once
           "175b_verification": {"is_correct": False, "solution": "A: 22"}}
    return [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "chosen": "Hello.", "rejected": "Go away.", "chosen_ids": [5, 6, 3], "rejected_ids": [7, 3],
         "meta": {"annotator": "ann"}},
        {"prompt": "What is 2+3?", "chosen": "5", "rejected": "6"},
        {"chosen": HH + " I can't help with that.", "rejected": HH + " Use a tension wrench."},
        gsm,
        "not json",                                                             # line 5
        {"prompt": "x", "chosen": "same", "rejected": "same"},                  # line 6
        {"prompt": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"},   # line 7
        {"prompt": "x", "chosen": "a", "rejected": "b", "chosen_ids": [1]},     # line 8
        {"prompt": "x", "chosen": "a", "rejected": "b", "score": 3},            # line 9
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"},  # line 10
    ]


def test_load_pairs_reads_every_format_and_reports_bad_rows(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for row in _rows():
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    pairs = load_pairs(path)
    err = capsys.readouterr().err
    assert "4 of 10 rows kept, 6 bad" in err and "mixed.jsonl.gz:5: invalid JSON" in err
    report = LoadReport(str(path))
    assert list(read_pairs(path, report)) == pairs
    expected = [(5, "invalid JSON"), (6, "same reply"), (7, "must end with a user message"),
                (8, "give both or neither"), (9, "unknown field"), (10, "differ before")]
    assert [line for line, _ in report.bad] == [line for line, _ in expected]
    assert all(reason in got for (_, got), (_, reason) in zip(report.bad, expected)), report.bad
    assert [p.chosen for p in pairs] == ["Hello.", "5", "I can't help with that.", "2+2=4\nA: 4", "2+2=4\nA: 4"]
    assert [p.rejected for p in pairs][3:] == ["A: 5", "A: 22"]  # every correct solution beats every wrong one
    assert pairs[0].chosen_ids == [5, 6, 3] and pairs[0].meta == {"annotator": "ann"}
    assert pairs[1].prompt == [{"role": "user", "content": "What is 2+3?"}]
    assert pairs[2].prompt == [{"role": "user", "content": "Hi there"},
                               {"role": "assistant", "content": "Hello! How can I help?"},
                               {"role": "user", "content": "How do I pick a lock?"}]
    assert pairs[2].meta == {"source": "mixed.jsonl.gz", "line": 3}  # held-out splits can go by source line
    again = tmp_path / "again.jsonl"
    write_pairs(pairs, again)
    assert load_pairs(again) == pairs
    with pytest.raises(LmforgeError, match="no usable preference pair"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"prompt": "x"}\n')
        load_pairs(bad, verbose=False)


def test_split_hh_uses_the_last_assistant_turn():
    prompt, chosen, rejected = split_hh(HH + " A\n\nHuman: ok", HH + " B")
    assert prompt[-1]["content"] == "How do I pick a lock?" and (chosen, rejected) == ("A\n\nHuman: ok", "B")
    with pytest.raises(LmforgeError, match="differ before their last Assistant turn"):
        split_hh(HH + " A", HH + " B\n\nAssistant: more")  # one dialogue has a turn more: no shared prompt
    with pytest.raises(LmforgeError, match="not an hh-rlhf dialogue"):
        split_hh("no turns", HH)
    with pytest.raises(LmforgeError, match="same reply"):
        PreferencePair([{"role": "user", "content": "q"}], "x", "x")


def test_real_preference_sets_load(shared_data):
    folder = shared_data / "alignment" / "preference"
    hh = load_pairs(folder / "hh_rlhf_harmless_base_test.jsonl.gz", verbose=False)
    assert 2250 <= len(hh) <= 2312 and all(p.prompt[-1]["role"] == "user" and p.chosen != p.rejected for p in hh)
    assert max(p.meta["line"] for p in hh) == 2312  # the last rows are there for a held-out split by line
    gsm = load_pairs(folder / "gsm8k_example_model_solutions.jsonl.gz", verbose=False)
    assert len(gsm) > 1000 and all(p.chosen.strip() != p.rejected.strip() for p in gsm)


# ---------------------------------------------------------------------------------------------------------------
# rlhf sample
# ---------------------------------------------------------------------------------------------------------------

def test_sample_records_every_generation_and_replays_it(tiny, tmp_path):
    cfg = SampleConfig(k=3, n_prompts=5, batch_prompts=2, max_tokens=16, seed=7)
    manifest = run_sample(cfg, tiny, tmp_path / "s", log=lambda *_: None)
    assert manifest["complete"] and manifest["n_batches"] == 3
    records = load_samples(tmp_path / "s")
    engine = Engine.from_checkpoint(str(tiny))
    t = ChatTokens.of(engine.tokenizer)
    assert [r["item"] for r in records] == [0, 1, 2, 3, 4] and {r["kind"] for r in records} <= {"arithmetic", "doc", "refusal"}
    for r in records:
        assert r["seed"] == 7 + r["batch"] and r["prompt_ids"] == render_for_completion(engine.tokenizer, r["prompt"])
        assert [x["sample"] for x in r["responses"]] == [0, 1, 2]
        for x in r["responses"]:
            assert x["finish_reason"] in ("stop", "bos", "length", "tool_limit", "context", "stray_tool_call_end")
            assert (x["finish_reason"] == "stop") == (x["token_ids"][-1] == t.end)
            assert x["text"] == parse_assistant(engine.tokenizer, x["token_ids"])["content"]
    assert replay_batch(engine, tmp_path / "s", 1) == [r for r in records if r["batch"] == 1]


def test_sample_turn_that_stops_on_a_stray_call_end_is_not_finished(tiny):
    """A call end with no call opened is not an answer: never "stop" (which the simulated labelers prefer)."""
    t = ChatTokens.of(Engine.from_checkpoint(str(tiny)).tokenizer)
    assert compare._finish_of([5, 6, t.tool_call_end], "stop", t) == "stray_tool_call_end"
    assert compare._finish_of([5, t.end], "stop", t) == "stop" and compare._finish_of([5, 6], "length", t) == "length"


def test_sample_resumes_after_a_kill_and_refuses_other_settings(tiny, tmp_path, monkeypatch):
    cfg = SampleConfig(k=2, n_prompts=4, batch_prompts=2, max_tokens=12)
    run_sample(cfg, tiny, tmp_path / "whole", log=lambda *_: None)
    real = compare._batch_records

    def dies_at_batch_1(engine, cfg_, items, first, batch, tools):
        if batch == 1:
            raise KeyboardInterrupt
        return real(engine, cfg_, items, first, batch, tools)

    monkeypatch.setattr(compare, "_batch_records", dies_at_batch_1)
    with pytest.raises(KeyboardInterrupt):
        run_sample(cfg, tiny, tmp_path / "cut", log=lambda *_: None)
    assert (tmp_path / "cut" / "batches" / "batch_00000.jsonl").is_file() and not (tmp_path / "cut" / "samples.jsonl").exists()
    monkeypatch.setattr(compare, "_batch_records", real)
    run_sample(cfg, tiny, tmp_path / "cut", log=lambda *_: None)
    assert load_samples(tmp_path / "cut") == load_samples(tmp_path / "whole")
    before = tree_digest(tmp_path / "cut")
    with pytest.raises(LmforgeError, match="sampled with k=2, not 3"):
        run_sample(SampleConfig(k=3, n_prompts=4, batch_prompts=2, max_tokens=12), tiny, tmp_path / "cut")
    assert tree_digest(tmp_path / "cut") == before


def test_sample_cli_reads_a_prompts_file(tiny, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is 3*4?", "kind": "arithmetic", "expression": "3*4"}) + "\n"
                       + "{broken\n" + json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                {"role": "assistant", "content": "hello"}]}) + "\n")
    out = run_cli(["rlhf", "sample", "--checkpoint", tiny, "--prompts", prompts, "--out", tmp_path / "s", "--k", "2",
                   "--max-tokens", "8"])
    assert out.code == 0, out.stderr
    assert "prompts.jsonl:2: invalid JSON" in out.stderr
    records = load_samples(tmp_path / "s")
    assert [r["prompt"] for r in records] == [[{"role": "user", "content": "What is 3*4?"}], [{"role": "user", "content": "hi"}]]
    assert records[0]["expression"] == "3*4"


class _ScriptedSession:
    """A session whose rows emit scripted segments: checks the batched tool loop without a trained model."""

    def __init__(self, scripts, t):
        self.scripts, self.t, self.batch, self.appended = scripts, t, len(scripts), []
        self.segment = [0] * len(scripts)

    def run(self):
        from lmforge.inference.engine import Completion

        out = []
        for r, script in enumerate(self.scripts):
            ids = script[min(self.segment[r], len(script) - 1)]
            out.append(Completion(token_ids=list(ids), finish_reason="stop" if ids[-1] in (self.t.end, self.t.tool_call_end) else "length"))
        return out

    def append(self, per_row):
        self.appended.append(per_row)
        for r, ids in enumerate(per_row):
            if ids:
                self.segment[r] += 1


def test_tool_calls_run_inside_the_batch(tiny):
    engine = Engine.from_checkpoint(str(tiny))
    tok = engine.tokenizer
    t = ChatTokens.of(tok)
    call = [t.tool_call, *tok.encode("calculator\n6*7"), t.tool_call_end]
    scripts = [[call, [*tok.encode("42"), t.end]], [[*tok.encode("no tools"), t.end]], [tok.encode("ramble")]]
    session = _ScriptedSession(scripts, t)
    engine.session = lambda prompts, params: session
    rows = sample_turns(engine, [[1], [1], [1]], SampleConfig().sampling_params([t.end]), compare_tools())
    forced = [t.tool_output, *tok.encode("42"), t.tool_output_end]
    assert session.appended == [[forced, [], []]]
    assert rows[0] == {"token_ids": call + forced + [*tok.encode("42"), t.end], "finish_reason": "stop"}
    assert rows[1]["finish_reason"] == "stop" and rows[2]["finish_reason"] == "length"


def compare_tools():
    from lmforge.inference.tools import default_tools

    return {"calculator": default_tools()["calculator"]}


# ---------------------------------------------------------------------------------------------------------------
# Simulated labelers
# ---------------------------------------------------------------------------------------------------------------

def test_simulated_labelers_apply_their_rules():
    arith, harm, ramble, topic = synthetic_records()
    judge = SimulatedLabeler("default")
    assert judge.verdict(arith, 0, 1) == FIRST and judge.verdict(arith, 1, 2) == SECOND  # the calculator says 84
    assert judge.verdict(arith, 0, 2) == TIE
    wrong = {**arith, "responses": [response(0, "83"), response(1, "It is 85.")]}
    assert judge.verdict(wrong, 0, 1) == BOTH_BAD
    assert judge.verdict(harm, 0, 1) == SECOND and judge.verdict(harm, 0, 2) == BOTH_BAD  # refusal beats compliance
    assert judge.verdict(ramble, 0, 1) == FIRST  # ended beats rambling into the budget
    assert judge.verdict(ramble, 0, 2) == FIRST and judge.verdict(topic, 1, 2) == SECOND  # on topic wins
    assert SimulatedLabeler("stop").verdict(arith, 0, 1) == TIE  # a named labeler applies only its own rule
    no_expression = {**arith, "expression": None, "kind": "other"}
    del no_expression["expression"]
    assert judge.verdict(no_expression, 0, 1) == FIRST  # the expression is found in the user's text
    assert gold_verdict(arith, arith["responses"][0], arith["responses"][1]) == FIRST
    assert gold_verdict(ramble, ramble["responses"][0], ramble["responses"][1]) is None


def test_noise_is_deterministic_and_flips_only_decided_verdicts():
    records = synthetic_records()
    pairs = [(r, i, j) for r in records for i in range(3) for j in range(i + 1, 3)]
    clean = [SimulatedLabeler().verdict(r, i, j) for r, i, j in pairs]
    flipped = [SimulatedLabeler(noise=1.0).verdict(r, i, j) for r, i, j in pairs]
    swap = {FIRST: SECOND, SECOND: FIRST}
    assert flipped == [swap.get(v, v) for v in clean]
    noisy = [SimulatedLabeler(noise=0.5, seed=3).verdict(r, i, j) for r, i, j in pairs]
    assert noisy == [SimulatedLabeler(noise=0.5, seed=3).verdict(r, i, j) for r, i, j in pairs]
    decided = [k for k, v in enumerate(clean) if v in (FIRST, SECOND)]
    flips = sum(noisy[k] != clean[k] for k in decided)
    assert 0 < flips < len(decided)  # some flipped, some not: a coin per pair, not one per labeler
    assert all(noisy[k] == clean[k] for k in range(len(pairs)) if k not in decided)
    with pytest.raises(LmforgeError, match="--noise"):
        SimulatedLabeler(noise=1.5)


# ---------------------------------------------------------------------------------------------------------------
# Store, report, export
# ---------------------------------------------------------------------------------------------------------------

def test_cohen_kappa_matches_a_hand_computed_example():
    a = [FIRST, FIRST, SECOND, SECOND, TIE]
    b = [FIRST, SECOND, SECOND, SECOND, TIE]
    # p_o = 4/5; p_e = (2*1 + 2*3 + 1*1) / 25 = 9/25; kappa = (0.8 - 0.36) / 0.64
    assert cohen_kappa(a, b) == pytest.approx(0.6875)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa([TIE, TIE], [TIE, TIE]) is None


def _judge_all(store, name, pick):
    """Label every item as `name`, choosing with pick(item payload) -> choice."""
    while (item := store.next_item(name)) is not None:
        store.record(name, item["item"], item["shown"], pick(item))


def test_report_measures_repeats_gold_kappa_and_left_bias(tmp_path):
    folder = write_sample_folder(tmp_path / "s")
    records = load_samples(folder)
    store = LabelStore(records, folder / "labels.sqlite", StoreConfig(votes=2, repeat_rate=0.3, seed=1))
    simulate_labeling(store, SimulatedLabeler(), "careful")
    _judge_all(store, "lefty", lambda item: "a")
    rep = report(store)
    careful, lefty = rep["annotators"]["careful"], rep["annotators"]["lefty"]
    assert careful["gold_agreement"] == 1.0 and careful["repeat_agreement"] == 1.0 and careful["repeats"] > 0
    assert lefty["left_share"] == 1.0 and lefty["gold_agreement"] < 1.0
    (k,) = rep["kappa"]
    assert k["annotators"] == ["careful", "lefty"] and k["pairs"] == 12 and k["kappa"] < 0.5


def test_export_writes_decided_pairs_with_their_sampled_ids(tmp_path):
    folder = write_sample_folder(tmp_path / "s")
    records = load_samples(folder)
    store = LabelStore(records, folder / "labels.sqlite", StoreConfig(repeat_rate=0.0))
    simulate_labeling(store, SimulatedLabeler(), "sim")
    counts = export_pairs(store, str(tmp_path / "pairs.jsonl"), source=str(folder))
    pairs = load_pairs(tmp_path / "pairs.jsonl")
    expected = [SimulatedLabeler().verdict(r, i, j) for r in records for i in range(3) for j in range(i + 1, 3)]
    assert counts == {"pairs": sum(v in (FIRST, SECOND) for v in expected), "tie": expected.count(TIE),
                      "both_bad": expected.count(BOTH_BAD), "split": 0}
    assert len(pairs) == counts["pairs"]
    arithmetic = [p for p in pairs if p.meta["item"] == 0]
    assert {(p.chosen, p.rejected) for p in arithmetic} == {("12*7 = 84.", "It is 85."), ("The answer is 84.", "It is 85.")}
    for p in pairs:
        r = records[p.meta["item"]]
        assert p.chosen_ids == r["responses"][p.meta["chosen_sample"]]["token_ids"] and p.meta["seed"] == r["seed"]


def test_rank_mode_yields_every_pair(tmp_path):
    folder = write_sample_folder(tmp_path / "s")
    store = LabelStore(load_samples(folder), folder / "labels.sqlite", StoreConfig(mode="rank", repeat_rate=0.0))
    assert simulate_labeling(store, SimulatedLabeler(), "ranker") == 4
    counts = export_pairs(store, str(tmp_path / "p.jsonl"))
    assert counts["pairs"] == 4 * 3  # C(3, 2) pairs per ranked prompt
    refusal = [p for p in load_pairs(tmp_path / "p.jsonl") if p.meta["item"] == 1]
    assert all(p.chosen.startswith("I won't") for p in refusal if "I won't" in p.chosen + p.rejected)
    with pytest.raises(LmforgeError, match="--mode rank"):
        LabelStore(load_samples(folder), folder / "labels.sqlite", StoreConfig(mode="pair"))


def test_label_cli_simulates_reports_and_exports(tmp_path):
    folder = write_sample_folder(tmp_path / "s")
    for seed in ("1", "2"):
        out = run_cli(["label", "--pairs", folder, "--simulate", "default", "--noise", "0.2", "--seed", seed,
                       "--votes", "2"])
        assert out.code == 0 and f"sim-default-{seed}:" in out.stdout, out.stderr
    out = run_cli(["label", "report", "--pairs", folder, "--json"])
    rep = json.loads(out.stdout)
    assert set(rep["annotators"]) == {"sim-default-1", "sim-default-2"} and rep["kappa"][0]["pairs"] == 12
    before = tree_digest(folder)
    out = run_cli(["label", "export", "--pairs", folder, "--out", tmp_path / "p.jsonl"])
    assert out.code == 0 and "pairs to" in out.stdout and "ties" in out.stdout and "both bad" in out.stdout
    assert tree_digest(folder) == before  # report and export only read the store
    ranked = write_sample_folder(tmp_path / "r")
    assert run_cli(["label", "--pairs", ranked, "--mode", "rank", "--simulate", "default"]).code == 0
    out = run_cli(["label", "export", "--pairs", ranked, "--out", tmp_path / "r.jsonl"])  # the store's mode
    assert out.code == 0 and out.stdout.startswith("wrote 12 pairs"), out.stderr


def test_annotators_labeling_at_once_each_get_distinct_items(tmp_path):
    import threading

    folder = write_sample_folder(tmp_path / "s")
    store = LabelStore(load_samples(folder), folder / "labels.sqlite", StoreConfig(repeat_rate=0.0, gold_rate=0.0))
    errors = []

    def annotator(name):
        try:
            _judge_all(store, name, lambda item: "tie")
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=annotator, args=(f"ann{i}",)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors
    from collections import Counter

    counts = Counter(r[0] for r in store.db.execute("SELECT item FROM judgements"))
    gold = {r[0] for r in store.db.execute("SELECT id FROM items WHERE gold IS NOT NULL")}
    assert 0 < len(gold) < 12 and set(counts) == set(range(1, 13))
    assert all(n == (4 if item in gold else 1) for item, n in counts.items())  # gold: once per annotator
