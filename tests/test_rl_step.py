"""How one GRPO step is computed: the first minibatch's old log-probs come from its first training forward (no
separate policy pass), and the result equals a separate scoring pass; the KL at step 0 stays exactly 0."""

from __future__ import annotations

import torch

from lmforge.checkpoint import save_model
from lmforge.model import GPT, GPTConfig
from lmforge.posttrain.rl import RLConfig, RLRun, build_batch, score_rollouts
from lmforge.tokenizer import Tokenizer


def _run(tmp_path, **kw) -> RLRun:
    tok = Tokenizer([])
    tok.save(tmp_path / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=128))
    ckpt = save_model(tmp_path / "ckpt" / "step_0000000", model, tmp_path / "tok", meta={"step": 0})
    cfg = RLConfig(steps=1, prompts_per_step=2, group_size=3, max_tokens=8, **kw)
    return RLRun(cfg, ckpt, tmp_path / "rl")


def test_deferred_old_logprobs_equal_a_scoring_pass(tmp_path):
    run = _run(tmp_path, minibatch_rows=2, epochs=1)
    rollouts = run.rollouts(0)
    rewards, _ = score_rollouts(rollouts, run.rewards)
    batch = build_batch(rollouts, run.tokens.pad)
    order = run.minibatches(len(rollouts))
    full = run.score(batch, order[0])  # every row scored by the policy pass
    first = order[0][0]
    scored = run.score(batch, order[0], deferred=True)
    assert scored["old"][first].abs().sum() == 0  # not scored yet: the first training forward fills them in
    run.update(batch, scored, run.advantages(batch, scored, rewards), order, deferred=True)
    on = batch.mask > 0
    assert torch.allclose(scored["old"][on], full["old"][on], atol=1e-6)
    assert torch.allclose(scored["entropy"][on], full["entropy"][on], atol=1e-5)
    assert (scored["old"][on] - batch.engine[on]).abs().max() < 1e-4


def test_kl_is_exactly_zero_at_step_zero_with_several_minibatches(tmp_path):
    row = _run(tmp_path, minibatch_rows=2, epochs=2).step()
    assert row["kl_k1"] == 0.0 and row["kl_k3"] == 0.0
    assert row["logprob_mismatch"] < 1e-4 and row["entropy"] > 0


def test_group_minibatches_keep_each_group_together(tmp_path):
    """Whole groups per minibatch (so the forward runs each prompt once); every row once per epoch either way,
    and the default order (rows shuffled one by one) is unchanged by the option's existence."""
    run = _run(tmp_path, minibatch_rows=3, epochs=2, group_minibatches=True)
    for epoch in run.minibatches(6):
        assert sorted(torch.cat(epoch).tolist()) == list(range(6))
        assert all(len(set((mb // 3).tolist())) == 1 for mb in epoch)
    shuffled = RLRun(RLConfig(steps=1, prompts_per_step=2, group_size=3, minibatch_rows=3, epochs=2),
                     run.base, tmp_path / "rl2").minibatches(6)
    gen = torch.Generator().manual_seed(1337)
    assert [mb.tolist() for epoch in shuffled for mb in epoch] == \
        [mb.tolist() for _ in range(2) for mb in torch.randperm(6, generator=gen).split(3)]
