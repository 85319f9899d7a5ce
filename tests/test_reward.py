"""Reward model: Bradley-Terry by hand, the reward read at each row's end token whatever the padding, a planted
preference learned, exact resume, and the checkpoint API RL uses (`RewardModel.from_checkpoint`, `score`)."""

import math
import shutil

import pytest
import torch
from preference_helpers import MARKER, fast_train, make_base, planted_pairs, write_pairs_file

from lmforge.checkpoint import load_model, load_state
from lmforge.posttrain.pairs_batches import (collate_pairs, encode_pairs, end_hidden, final_hidden, pad_rows,
                                             render_response)
from lmforge.posttrain.preferences import PreferencePair
from lmforge.posttrain.reward import (RewardConfig, RewardModel, attach_head, bradley_terry_loss, run_reward_train,
                                      wilson_interval)
from lmforge.tokenizer.chat_format import ChatTokens, render_for_completion
from lmforge.utils import LmforgeError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("rm_base"))


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """A reward model trained 40 steps on 400 planted pairs, evaluated on the last 100."""
    root, _ = base
    out = tmp_path_factory.mktemp("rm")
    data = write_pairs_file(out / "pairs.jsonl", planted_pairs(500, 1))
    cfg = RewardConfig(val_last=100, train_overrides=fast_train(max_steps=40, eval_every=20))
    return run_reward_train(cfg, root, out / "run", [str(data)]), out


def test_bradley_terry_and_centring_equal_hand_values():
    rc, rr = torch.tensor([1.0, -0.5]), torch.tensor([0.0, 0.5])
    want = [math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))]  # -log sigmoid(+1), -log sigmoid(-1)
    assert bradley_terry_loss(rc, rr).tolist() == pytest.approx(want, abs=1e-6)
    # centring adds coef * (r_c + r_r)^2: (1 + 0)^2 and (-0.5 + 0.5)^2
    assert bradley_terry_loss(rc, rr, 0.1).tolist() == pytest.approx([want[0] + 0.1, want[1]], abs=1e-6)


def test_wilson_interval_equals_the_formula():
    assert wilson_interval(8, 10) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.27754, abs=1e-5)


def test_a_pair_renders_to_prompt_then_response_with_targets_on_the_response_only(base):
    _, tok = base
    end, pad = ChatTokens.of(tok).end, ChatTokens.of(tok).pad
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    seq = render_response(tok, prompt, "hello friend")
    prefix = render_for_completion(tok, prompt)
    assert list(seq.ids[:seq.start]) == prefix and seq.ids[-1] == end
    assert tok.decode(list(seq.ids[seq.start:-1])) == "hello friend"
    sampled = render_response(tok, prompt, "ignored text", response_ids=[5, 6, 7])  # sampled ids: used as they are
    assert list(sampled.ids) == prefix + [5, 6, 7, end]
    batch = collate_pairs([(seq, sampled)], pad, pad_multiple=16)
    for r, s in enumerate((seq, sampled)):
        learned = [t for t in batch.targets[r].tolist() if t >= 0]
        assert learned == list(s.ids[s.start:])  # the response and its <|end|>, never the prompt
        assert batch.idx[r, batch.end[r]].item() == end and batch.end[r].item() == len(s.ids) - 1


def test_reward_is_read_at_each_rows_end_token_with_left_or_right_padding(base):
    root, tok = base
    torch.manual_seed(3)
    model, _ = load_model(root)
    rm = RewardModel(attach_head(model), tok).eval()
    prompt = [{"role": "user", "content": "What is the capital?"}]
    seqs = [list(render_response(tok, prompt, text).ids) for text in ("ok", "a much longer answer " * 4, "no")]
    alone = torch.cat([rm.score([s]) for s in seqs])
    right, left = rm.score(seqs, pad_side="right"), rm.score(seqs, pad_side="left")
    assert torch.allclose(alone, right, atol=1e-5) and torch.allclose(alone, left, atol=1e-5)
    # Reading the batch's last column would read padding for the short rows: that value differs from the reward.
    idx, valid, end, _ = pad_rows([render_response(tok, prompt, t) for t in ("ok", "a much longer answer " * 4)],
                                  ChatTokens.of(tok).pad, "right")
    with torch.no_grad():
        at_last_column = rm.model.reward_head(final_hidden(rm.model, idx, valid)[:, -1])
    assert not valid[0, -1] and abs(at_last_column[0].item() - alone[0].item()) > 1e-3
    # The reward's shortcut (the last layer at the read slot only) equals the full forward read there.
    for side in ("right", "left"):
        idx, valid, end, _ = pad_rows([render_response(tok, prompt, t) for t in ("ok", "a longer answer " * 4)],
                                      ChatTokens.of(tok).pad, side)
        with torch.no_grad():
            full = final_hidden(rm.model, idx, valid)[torch.arange(2), end]
            assert torch.allclose(end_hidden(rm.model, idx, valid, end), full, atol=1e-5)
    # An unfinished answer is scored as if its turn closed where it stops.
    assert torch.allclose(rm.score([seqs[0][:-1]]), alone[:1], atol=1e-6)


def test_planted_preference_is_learned(trained, base):
    summary, _ = trained
    report = summary["eval"]
    assert report["pairs"] == 100 and report["accuracy"] >= 0.9 and report["accuracy_ci95"][0] > 0.75
    assert report["mean_margin"] > 1.0
    # the marker itself raises the reward: the same held-out reply with and without it
    rm = RewardModel.from_checkpoint(summary["checkpoint"])
    _, tok = base
    raised = 0
    rows = planted_pairs(40, 7)
    for row in rows:
        plain = render_response(tok, row["prompt"], row["rejected"]).ids
        marked = render_response(tok, row["prompt"], f"{row['rejected']} {MARKER}").ids
        r = rm.score([plain, marked])
        raised += int(r[1] > r[0])
    assert raised >= 0.9 * len(rows)


def test_metrics_log_accuracy_and_margin(trained):
    import json

    summary, out = trained
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all({"accuracy", "margin", "reward_mean"} <= set(r) for r in rows)
    evaluated = [r for r in rows if "val_accuracy" in r]
    assert [r["step"] for r in evaluated] == [20, 40] and evaluated[-1]["val_accuracy"] == summary["eval"]["accuracy"]


def test_head_is_saved_with_the_checkpoint_and_a_plain_model_is_refused(trained, base):
    summary, _ = trained
    _, state, _ = load_state(summary["checkpoint"])
    rm = RewardModel.from_checkpoint(summary["checkpoint"])
    assert torch.equal(rm.model.reward_head.weight, state["reward_head.weight"])
    with pytest.raises(LmforgeError, match="no reward head"):
        RewardModel.from_checkpoint(base[0])


@pytest.mark.timeout(120)
def test_reward_resume_is_exact(base, tmp_path):
    root, _ = base
    data = write_pairs_file(tmp_path / "pairs.jsonl", planted_pairs(120, 2))
    cfg = RewardConfig(val_last=20, center_coef=0.01,
                       train_overrides=fast_train(max_steps=6, checkpoint_every=3, keep_checkpoints=0))
    full = run_reward_train(cfg, root, tmp_path / "a", [str(data)])
    run_reward_train(cfg, root, tmp_path / "b", [str(data)])
    shutil.rmtree(tmp_path / "b" / "ckpt" / "step_0000006")  # as if it had died after step 3
    resumed = run_reward_train(cfg, root, tmp_path / "b", [str(data)])
    assert resumed["loss"] == full["loss"] and resumed["eval"] == full["eval"]
    sa, sb = load_state(tmp_path / "a")[1], load_state(tmp_path / "b")[1]
    assert sa.keys() == sb.keys() and "reward_head.bias" in sa
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_long_prompts_lose_their_oldest_turns_and_unfittable_pairs_are_counted(base):
    _, tok = base
    long_turns = [m for i in range(30) for m in ({"role": "user", "content": f"question {i} about many things"},
                                                 {"role": "assistant", "content": f"answer {i} with detail"})]
    pair = PreferencePair(long_turns + [{"role": "user", "content": "last one?"}], "yes", "no")
    too_long = PreferencePair([{"role": "user", "content": "q"}], "word " * 400, "no")
    examples, stats = encode_pairs(tok, [pair, too_long], max_tokens=128)
    assert len(examples) == 1 and stats["prompt_shortened"] == 1 and stats["dropped_too_long"] == 1
    chosen = examples[0][0]
    assert len(chosen.ids) <= 128 and "last one?" in tok.decode(list(chosen.ids))


def test_reward_score_cli_reports_accuracy_and_writes_rewards(trained, tmp_path):
    import json

    from hostile import run_cli

    summary, out = trained
    held_out = write_pairs_file(tmp_path / "held.jsonl", planted_pairs(500, 1)[-30:])
    result = run_cli(["reward", "score", "--checkpoint", out / "run", "--pairs", held_out, "--out",
                      tmp_path / "rewards.jsonl"])
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pairs"] == 30 and report["accuracy"] >= 0.9 and len(report["accuracy_ci95"]) == 2
    rows = [json.loads(line) for line in (tmp_path / "rewards.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and all(set(r) == {"chosen_reward", "rejected_reward"} for r in rows)
