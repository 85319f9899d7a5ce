"""DPO: the loss by hand, response-only log-probs against a plain forward, the reference cached once per input,
a planted preference learned, and exact resume."""

import json
import math
import shutil

import pytest
import torch
from preference_helpers import MARKER, fast_train, make_base, planted_pairs, write_pairs_file

from lmforge.checkpoint import load_model
from lmforge.posttrain.dpo import REFERENCE_FILE, DPOConfig, dpo_loss, run_dpo, sequence_logps
from lmforge.posttrain.pairs_batches import collate_pairs, render_response
from lmforge.tokenizer.chat_format import ChatTokens


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("dpo_base"))


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    root, _ = base
    out = tmp_path_factory.mktemp("dpo")
    data = write_pairs_file(out / "pairs.jsonl", planted_pairs(500, 1))
    cfg = DPOConfig(val_last=100, train_overrides=fast_train(max_steps=40, batch_size=8, eval_every=20))
    return run_dpo(cfg, root, out / "run", [str(data)]), out, data


def test_dpo_loss_equals_hand_value():
    # margin = (-1 - -1.5) - (-2 - -1.5) = 1; beta 0.5 -> -log sigmoid(0.5)
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), 0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-6)
    # the policy equal to the reference: log 2 whatever beta
    same = dpo_loss(torch.tensor([-3.0]), torch.tensor([-4.0]), torch.tensor([-3.0]), torch.tensor([-4.0]), 7.0)
    assert same.item() == pytest.approx(math.log(2), abs=1e-6)


def test_log_probs_are_summed_over_the_response_tokens_only(base):
    root, tok = base
    model, _ = load_model(root)
    prompt = [{"role": "user", "content": "say something nice please"}]
    chosen, rejected = render_response(tok, prompt, "a kind word"), render_response(tok, prompt, "no")
    batch = collate_pairs([(chosen, rejected)], ChatTokens.of(tok).pad)
    got = sequence_logps(model, batch)
    for r, seq in enumerate((chosen, rejected)):
        ids = torch.tensor([seq.ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0][0].double(), -1)
        want = sum(logp[i - 1, seq.ids[i]].item() for i in range(seq.start, len(seq.ids)))
        assert got[r].item() == pytest.approx(want, abs=1e-3)


def test_planted_preference_raises_the_markers_margin(trained, base):
    summary, out, _ = trained
    ev = summary["eval"]
    assert ev["val_accuracy"] >= 0.8 and ev["val_margin"] > 1.0
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = {"chosen_logp", "rejected_logp", "chosen_shift", "rejected_shift", "margin", "accuracy"}
    assert all(keys <= set(r) for r in rows)
    # the marker's own log-prob margin: the same replies with and without it, policy minus reference
    root, tok = base
    policy, _ = load_model(summary["checkpoint"])
    reference, _ = load_model(root)
    pad = ChatTokens.of(tok).pad
    pairs = [(render_response(tok, r["prompt"], f"{r['rejected']} {MARKER}"),
              render_response(tok, r["prompt"], r["rejected"])) for r in planted_pairs(30, 7)]
    batch = collate_pairs(pairs, pad)
    shift = sequence_logps(policy, batch) - sequence_logps(reference, batch)
    marked, plain = shift[:30], shift[30:]
    assert (marked - plain).mean() > 1.0 and (marked > plain).float().mean() >= 0.8


def test_reference_is_computed_once_per_input(trained, base, tmp_path, monkeypatch):
    summary, out, data = trained
    cache = out / "run" / REFERENCE_FILE
    stamp = cache.stat().st_mtime_ns
    import lmforge.posttrain.dpo as dpo

    def refuse(*a, **k):
        raise AssertionError("reference log-probs recomputed")

    monkeypatch.setattr(dpo, "reference_logps", refuse)
    cfg = DPOConfig(val_last=100, train_overrides=fast_train(max_steps=40, batch_size=8, eval_every=20))
    again = run_dpo(cfg, base[0], out / "run", [str(data)])  # finished run: reuses the cache, trains nothing
    assert again["step"] == 40 and cache.stat().st_mtime_ns == stamp
    changed = write_pairs_file(tmp_path / "other.jsonl", planted_pairs(60, 3))
    with pytest.raises(AssertionError, match="recomputed"):  # another pairs file: another key
        run_dpo(DPOConfig(val_last=10, train_overrides=fast_train(max_steps=1)), base[0], out / "run",
                [str(changed)])


@pytest.mark.timeout(120)
def test_dpo_resume_is_exact(base, tmp_path):
    root, _ = base
    data = write_pairs_file(tmp_path / "pairs.jsonl", planted_pairs(100, 2))
    cfg = DPOConfig(val_last=20, train_overrides=fast_train(max_steps=6, batch_size=8, checkpoint_every=3,
                                                             keep_checkpoints=0))
    full = run_dpo(cfg, root, tmp_path / "a", [str(data)])
    run_dpo(cfg, root, tmp_path / "b", [str(data)])
    shutil.rmtree(tmp_path / "b" / "ckpt" / "step_0000006")
    resumed = run_dpo(cfg, root, tmp_path / "b", [str(data)])
    assert resumed["loss"] == full["loss"] and resumed["eval"] == full["eval"]
    wa, _ = load_model(tmp_path / "a")
    wb, _ = load_model(tmp_path / "b")
    for (k, p), q in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(p, q), k
