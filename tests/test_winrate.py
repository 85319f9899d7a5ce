"""`lmforge eval winrate`: a policy judged against itself wins exactly half with no KL; a planted better policy (one
that ends its answers where the baseline rambles) wins, and pays KL for it."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.checkpoint import save_model
from lmforge.evaluation.winrate import (WinRateConfig, judge_by_reward, paired_answers, reward_scorer, run_winrate,
                                        sampled_mask, win_rate)
from lmforge.model import GPT, GPTConfig
from lmforge.posttrain.reward import attach_head
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.chat_format import ChatTokens
from lmforge.utils import LmforgeError

SMALL = dict(prompts=6, k=2, max_tokens=6, batch_prompts=6)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random tiny model, a copy of it planted to end every answer at once, and a random reward model."""
    root = tmp_path_factory.mktemp("winrate")
    tok = Tokenizer([])
    tok.save(root / "tok")
    config = GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=256)
    torch.manual_seed(0)
    model = GPT(config)
    baseline = save_model(root / "sft" / "step_0000000", model, root / "tok", meta={"step": 0})
    with torch.no_grad():
        # Every residual stream gets a large constant first coordinate, so the final norm's output points along it
        # whatever the input, and only <|end|> reads that coordinate: the planted policy ends every answer at once.
        model.tok_emb.weight[:, 0] = 100.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[ChatTokens.of(tok).end, 0] = 50.0
    planted = save_model(root / "planted" / "step_0000000", model, root / "tok", meta={"step": 0})
    reward = save_model(root / "rm" / "step_0000000", attach_head(GPT(config)), root / "tok", meta={"step": 0})
    return root, baseline, planted, reward


def test_a_policy_against_itself_wins_half_with_zero_kl(models):
    root, baseline, _, reward = models
    result = run_winrate(WinRateConfig(**SMALL), baseline, baseline, root / "self", reward_model=reward,
                         log=lambda m: None)
    for judge in ("reward_model", "held_out_judge"):
        r = result[judge]
        assert r["win_rate"] == 0.5 and r["ties"] == r["comparisons"] == 12
        assert r["ci95"][0] < 0.5 < r["ci95"][1]
    assert result["kl"]["tokens"] > 0
    assert result["kl"]["kl_k1"] == 0.0 and result["kl"]["kl_k3"] == 0.0
    assert json.loads((root / "self" / "winrate.json").read_text())["kl"] == result["kl"]


def test_a_planted_better_policy_wins_and_pays_kl(models):
    root, baseline, planted, reward = models
    cfg = WinRateConfig(**SMALL, judge="stop", judge_noise=0.0)  # the judge prefers an answer that ended
    result = run_winrate(cfg, planted, baseline, root / "planted_run", log=lambda m: None)
    r = result["held_out_judge"]
    assert r["wins"] == r["comparisons"] == 12 and r["win_rate"] == 1.0 and r["ci95"][0] > 0.5
    assert "reward_model" not in result  # no --reward-model: only the held-out judge
    assert result["kl"]["kl_k3"] > 0.1 and result["kl"]["kl_k1"] > 0.1
    policy = [json.loads(line) for line in (root / "planted_run" / "policy" / "samples.jsonl").open()]
    assert all(a["finish_reason"] == "stop" for rec in policy for a in rec["responses"])
    # the reward judge on the same answers: a reward that prefers the shorter answer crowns the planted policy
    base = [json.loads(line) for line in (root / "planted_run" / "baseline" / "samples.jsonl").open()]
    scores = judge_by_reward(paired_answers(policy, base), lambda pairs: [-float(len(a)) for _, a in pairs])
    assert win_rate(scores)["win_rate"] == 1.0
    # a reward model reads each answer at its own end token, not at the end of the prompt's turn before it: even a
    # random one tells the (different) answers apart
    hash_ = json.loads((root / "planted_run" / "policy" / "manifest.json").read_text())["settings"]["tokenizer_hash"]
    by_model = win_rate(judge_by_reward(paired_answers(policy, base), reward_scorer(reward, hash_)))
    assert by_model["ties"] == 0 and by_model["comparisons"] == 12


def test_win_rate_counts_ties_as_half_and_masks_tool_outputs():
    r = win_rate([1.0, 0.5, 0.5, 0.0, 1.0, 1.0])
    assert r["win_rate"] == pytest.approx(4 / 6, abs=1e-4) and (r["wins"], r["ties"], r["losses"]) == (3, 2, 1)
    assert sampled_mask([5, 7, 1, 2, 8, 6, 9], tool_output=7, tool_output_end=8) == \
        [True, False, False, False, False, True, True]


def test_the_same_answer_ties_under_the_reward_judge_whatever_its_rounding():
    rec = {"item": 0, "prompt_ids": [1, 2], "seed": 3}
    same, other = {"token_ids": [5, 6]}, {"token_ids": [5, 7]}
    pairs = paired_answers([{**rec, "responses": [same, same]}], [{**rec, "responses": [same, other]}])
    noisy = iter([0.5, 0.5 + 1e-7, 0.5 - 1e-7, 0.5])  # what batching with other rows can do to equal sequences
    scores = judge_by_reward(pairs, lambda rows: [next(noisy) for _ in rows])
    assert scores == [0.5, 1.0]


def test_answers_of_other_prompts_are_refused():
    rec = {"item": 0, "prompt_ids": [1, 2], "seed": 3, "responses": []}
    with pytest.raises(LmforgeError, match="different prompts or seeds"):
        paired_answers([rec], [{**rec, "seed": 4}])
