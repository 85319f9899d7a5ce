"""Reinforcement learning (`lmforge rlhf train`): advantages, KL, GAE, log-probs equal to the engine's, and a short
run that learns a planted preference."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.checkpoint import save_model
from lmforge.inference.engine import Engine
from lmforge.inference.sampling import SamplingParams
from lmforge.model import GPT, GPTConfig
from lmforge.posttrain import rl_losses as L
from lmforge.posttrain.rl import RLConfig, RLRun, build_batch, run_rl, sequence_logprobs
from lmforge.posttrain.rl_rewards import arithmetic_reward, last_number
from lmforge.posttrain.rl_rollout import rollout_group
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.chat_format import ChatTokens, render_for_completion

MARKER = "!"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random tiny model over the byte tokenizer, saved as a checkpoint (the RL run starts from a folder)."""
    root = tmp_path_factory.mktemp("rl_base")
    tok = Tokenizer([])
    tok.save(root / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=128))
    ckpt = save_model(root / "ckpt" / "step_0000000", model, root / "tok", meta={"step": 0})
    return ckpt, tok, model


def test_equal_rewards_give_zero_advantage_and_zero_gradient():
    rewards = torch.tensor([0.7, 0.7, 0.7, 0.7, 1.0, 0.0, 1.0, 0.0])
    for loo in (False, True):
        for std in (False, True):
            adv = L.group_advantages(rewards, 4, leave_one_out=loo, normalize_std=std)
            assert torch.equal(adv[:4], torch.zeros(4))
            assert adv[4] > 0 > adv[5]
    # RLOO's baseline is the mean of the others: for [1, 0, 1, 0], 1 - 1/3
    assert L.group_advantages(rewards, 4, leave_one_out=True)[4].item() == pytest.approx(2 / 3)
    logits = torch.randn(4, 6, requires_grad=True)
    lp = logits.log_softmax(-1)[:, 0]
    loss, _ = L.clipped_policy_loss(lp, lp.detach() - 0.05, torch.zeros(4), torch.ones(4), 0.2, 4.0)
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_kl_estimators():
    lp = torch.tensor([-1.0, -2.5, -0.1])
    k1, k3 = L.kl_estimates(lp, lp.clone())
    assert torch.equal(k1, torch.zeros(3)) and torch.equal(k3, torch.zeros(3))
    k1, k3 = L.kl_estimates(lp, lp + torch.tensor([0.5, -0.5, 0.2]))
    assert (k3 > 0).all()  # k3 is never negative, k1 can be
    assert k1[0].item() == pytest.approx(-0.5) and k3[0].item() == pytest.approx(math.exp(0.5) - 1 - 0.5)


def test_gae_by_hand():
    # one row, actions at positions 0, 1 and 3 (position 2 is a forced tool output, skipped)
    rewards = torch.tensor([[0.0, 0.5, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.4, 9.0, 0.6]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    g, lam = 0.9, 0.8
    d3 = 1.0 - 0.6  # last action: the next value is 0
    d1 = 0.5 + g * 0.6 - 0.4
    d0 = 0.0 + g * 0.4 - 0.2
    a3, a1 = d3, d1 + g * lam * d3
    a0 = d0 + g * lam * a1
    adv, ret = L.gae(rewards, values, mask, g, lam)
    assert adv[0].tolist() == pytest.approx([a0, a1, 0.0, a3])
    assert ret[0].tolist() == pytest.approx([a0 + 0.2, a1 + 0.4, 0.0, a3 + 0.6])


def test_arithmetic_reward_reads_the_last_number():
    ex = {"expression": "37 * 48"}
    assert arithmetic_reward([], [], "37 * 48 = 1776.", ex) == 1.0
    assert arithmetic_reward([], [], "1776 or maybe 1777", ex) == 0.0  # listing candidates earns nothing
    assert arithmetic_reward([], [], "I don't know", ex) == 0.0
    assert last_number("it is 1,234.5 and -3") == -3.0


@pytest.mark.parametrize("sampling", [dict(temperature=1.0), dict(temperature=0.7, top_k=40, top_p=0.9)])
def test_old_logprobs_equal_the_engines(base, sampling):
    """The training forward scores each sampled token under the processed distribution the engine drew it from."""
    _, tok, model = base
    engine = Engine(model, tok)
    prompts = [render_for_completion(tok, [{"role": "user", "content": q}]) for q in ("What is 2+3?", "Hi")]
    params = SamplingParams(max_tokens=16, n=3, seed=5, **sampling)
    rollouts = rollout_group(engine, prompts, [{}, {}], params, tools={})
    batch = build_batch(rollouts, ChatTokens.of(tok).pad)
    with torch.no_grad():
        lp, _, _ = sequence_logprobs(model, batch, params, engine.vocab_limit)
        raw = model(batch.x)[0].log_softmax(-1).gather(-1, batch.targets[..., None])[..., 0]
    on = batch.mask > 0
    assert int(on.sum()) == sum(len(r.response_ids) for r in rollouts) > 0
    assert (lp[on] - batch.engine[on]).abs().max() < 1e-4
    if "top_k" in sampling:  # scoring under the raw distribution would be measurably different
        assert (raw[on] - batch.engine[on]).abs().max() > 1e-2


def test_kl_is_exactly_zero_at_step_zero_and_logged(base, tmp_path):
    ckpt, _, _ = base
    run = RLRun(RLConfig(steps=1, prompts_per_step=2, group_size=2, max_tokens=8), ckpt, tmp_path / "rl")
    row = run.step()
    assert row["kl_k1"] == 0.0 and row["kl_k3"] == 0.0
    assert row["logprob_mismatch"] < 1e-4
    for key in ("reward", "entropy", "response_len", "clip_frac"):
        assert math.isfinite(row[key])


def _marker_reward(prompt_ids, response_ids, completion, example):
    return float(MARKER in completion)


@pytest.mark.parametrize("group_minibatches", [False, True])
def test_planted_preference_raises_reward_and_marker_rate(base, tmp_path, group_minibatches):
    """Responses that contain the marker win: a few GRPO steps make the tiny random model write it more (with rows
    shuffled one by one into minibatches, or whole groups)."""
    ckpt, _, _ = base
    cfg = RLConfig(steps=10, prompts_per_step=4, group_size=8, max_tokens=12, lr=1e-2, epochs=2, minibatch_rows=16,
                   unfinished_penalty=0.0, checkpoint_every=4, seed=3, group_minibatches=group_minibatches)
    summary = run_rl(cfg, ckpt, tmp_path / "rl", extra_rewards=[("marker", _marker_reward)], progress=False)
    rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["reward_marker"] for r in rows[:2]) / 2
    last = sum(r["reward_marker"] for r in rows[-2:]) / 2
    # Every step samples from the weights it trains (the engine's prepared copies follow each optimizer step, whose
    # fused kernel leaves the version counters to `fused_adamw`'s hook): sampled and scored log-probs agree.
    assert max(r["logprob_mismatch"] for r in rows) < 1e-3, [r["logprob_mismatch"] for r in rows]
    assert last > first + 0.4, (first, last)
    assert rows[-1]["kl_k3"] > 0
    assert (tmp_path / "rl" / "reward_vs_kl.png").stat().st_size > 0
    assert summary["step"] == 10


def test_reward_model_adapter_scores_the_sampled_ids_to_the_end_token(monkeypatch):
    """The reward model plugs in as one reward function; it sees prompt + response ids, cut after `<|end|>`."""
    reward = pytest.importorskip("lmforge.posttrain.reward")
    from lmforge.posttrain.rl_rewards import build_rewards

    seen = []

    class Scorer:
        def score(self, sequences):
            seen.extend(sequences)
            return torch.tensor([float(len(s)) for s in sequences])

    monkeypatch.setattr(reward.RewardModel, "from_checkpoint", classmethod(lambda cls, path, device="cpu": Scorer()))
    end = 9
    fns = dict(build_rewards(["arithmetic", "reward_model"], end, 0.5, reward_model="rm"))
    assert fns["reward_model"]([1, 2], [3, end, 4], "", {}) == 4.0
    assert fns["reward_model"]([1, 2], [3, 4], "", {}) == 4.0
    assert seen == [[1, 2, 3, end], [1, 2, 3, 4]]
    assert fns["unfinished"]([1, 2], [3, 4], "", {}) == -0.5 and fns["unfinished"]([1], [end], "", {}) == 0.0


def test_ppo_runs_checkpoints_and_resumes(base, tmp_path):
    """PPO (value head, GAE) trains, saves its value head with the optimizer state, and a second call resumes."""
    from lmforge.checkpoint import load_train_state, train_checkpoints

    ckpt, _, _ = base
    kw = dict(algo="ppo", prompts_per_step=2, group_size=2, max_tokens=8, kl_coef=0.05, checkpoint_every=1,
              lr=1e-3)
    run_rl(RLConfig(steps=2, **kw), ckpt, tmp_path / "rl", progress=False)
    _, opt = load_train_state(train_checkpoints(tmp_path / "rl")[-1])
    assert opt["value_head"]["weight"].abs().sum() > 0  # the value head learned and was saved
    summary = run_rl(RLConfig(steps=3, **kw), ckpt, tmp_path / "rl", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and summary["step"] == 3
    assert all(math.isfinite(r["loss"]) for r in rows)
    with pytest.raises(Exception, match="ppo run"):
        RLRun(RLConfig(steps=4, prompts_per_step=2, group_size=2), ckpt, tmp_path / "rl")


def test_tool_call_reward_credits_a_call_that_computed_the_right_value():
    """The shaped, still verifiable reward: a calculator output equal to the prompt's value earns the weight,
    whatever the final sentence says; a wrong call, no call or an error earns nothing."""
    from lmforge.posttrain.rl_rewards import build_rewards

    tok = Tokenizer([])
    t = ChatTokens.of(tok)

    def turn(call: str, output: str, answer: str) -> list[int]:
        return ([t.tool_call, *tok.encode(f"calculator\n{call}"), t.tool_call_end, t.tool_output,
                 *tok.encode(output), t.tool_output_end, *tok.encode(answer), t.end])

    fns = dict(build_rewards(["arithmetic", "tool_call"], t.end, 0.0, tokenizer=tok, tool_call_weight=0.25))
    ex = {"expression": "37 * 48"}
    assert fns["tool_call"]([], turn("37*48", "1776", "It is 1767."), "It is 1767.", ex) == 0.25  # miscopied result
    assert fns["arithmetic"]([], [], "It is 1767.", ex) == 0.0
    assert fns["tool_call"]([], turn("37*84", "3108", "It is 3108."), "It is 3108.", ex) == 0.0  # miscopied call
    assert fns["tool_call"]([], tok.encode("1776") + [t.end], "1776", ex) == 0.0  # no call at all
    assert fns["tool_call"]([], turn("37*", "error: syntax error", "1776"), "1776", ex) == 0.0
    assert fns["tool_call"]([], turn("37*48", "1776", "x"), "x", {}) == 0.0  # no expression to check against
    with pytest.raises(Exception, match="tokenizer"):
        build_rewards(["tool_call"], t.end, 0.0)
