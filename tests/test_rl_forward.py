"""The RL forward that runs each group's shared prompt once (`rl_forward.sampled_hidden`) equals the plain forward
over whole rows: the same log-probs, loss and gradients to float rounding, for groups whose prompts differ in length,
rows of several lengths with forced (tool output) tokens, right- or left-padded plain rows, GQA, QK-norm and
learned positions."""

from __future__ import annotations

import pytest
import torch

from lmforge.inference.sampling import SamplingParams
from lmforge.model import GPT, GPTConfig
from lmforge.posttrain import rl_forward
from lmforge.posttrain import rl_losses as L
from lmforge.posttrain.pairs_batches import final_hidden
from lmforge.posttrain.rl_forward import build_batch, sequence_logprobs
from lmforge.posttrain.rl_rollout import Rollout

PAD = 0
CONFIGS = [dict(n_head=4, n_kv_head=2, qk_norm=True),
           dict(n_head=2, pos="learned", norm="layernorm", mlp="gelu")]


def _rollouts(gen: torch.Generator, long_row: bool = False) -> list[Rollout]:
    """Groups of 3, 2 and 1 rows over prompts of 6, 11 and 3 tokens; responses of 1 to 12 tokens, some forced (and
    with `long_row` one of 40, as after a tool call, which the forward runs apart)."""
    rows = []
    for prompt_len, group in ((6, 3), (11, 2), (3, 1)):
        prompt = torch.randint(1, 64, (prompt_len,), generator=gen).tolist()
        for _ in range(group):
            n = 40 if long_row and len(rows) == 1 else int(torch.randint(1, 13, (1,), generator=gen))
            r = Rollout(prompt)
            r.response_ids = torch.randint(1, 64, (n,), generator=gen).tolist()
            r.sampled = [int(s) for s in (torch.rand(n, generator=gen) > 0.25).tolist()]
            r.sampled[0] = 1
            r.engine_logprobs = [0.0] * n
            rows.append(r)
    return rows


def _plain_logprobs(model: GPT, batch: rl_forward.Batch, params: SamplingParams, left: bool) -> torch.Tensor:
    """Log-probs at the sampled positions from the plain forward over whole rows, right- or left-padded."""
    x, valid, where = batch.x, batch.valid, batch.mask > 0
    if left:  # move every row's real tokens to the right end
        shift = (~valid).sum(1)
        cols = (torch.arange(x.size(1))[None] - shift[:, None]) % x.size(1)
        x, valid, where = x.gather(1, cols), valid.gather(1, cols), where.gather(1, cols)
    hidden = final_hidden(model, x, valid)[where]
    return L.token_logprobs(model.lm_head(hidden), batch.targets[batch.mask > 0], params, None, False)[0]


@pytest.mark.parametrize("long_row", [False, True])
@pytest.mark.parametrize("shape", CONFIGS)
def test_shared_prompt_forward_equals_the_plain_forward(shape, long_row, monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, n_layer=2, n_embd=32, block_size=64, **shape))
    batch = build_batch(_rollouts(torch.Generator().manual_seed(1), long_row), PAD)
    own = batch.valid.sum(1) - batch.start
    assert (len(rl_forward.length_chunks(own)) > 1) == long_row
    assert batch.prompt.tolist() == [0, 0, 0, 1, 1, 2]
    params = SamplingParams(temperature=0.8)
    weights = torch.randn(int((batch.mask > 0).sum()), generator=torch.Generator().manual_seed(2))

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = {side: _plain_logprobs(model, batch, params, side == "left") for side in ("right", "left")}
    plain_grads = grads((plain["right"] * weights).sum())

    def no_plain_forward(*a):
        raise AssertionError("rows that share a prompt must not run the plain forward")

    monkeypatch.setattr(rl_forward, "final_hidden", no_plain_forward)
    lp, _, _ = sequence_logprobs(model, batch, params, None, with_entropy=False)
    shared = lp[batch.mask > 0]
    for side in ("right", "left"):
        assert torch.allclose(shared, plain[side], atol=1e-5), side
    for ours, theirs in zip(grads((shared * weights).sum()), plain_grads):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    assert float((lp.detach() * (batch.mask == 0)).abs().sum()) == 0.0  # nothing outside the sampled tokens


def test_rows_with_distinct_prompts_run_the_plain_forward():
    """A minibatch with one row per prompt has nothing to share: it takes the plain path (bit for bit when its
    rows are of similar lengths)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=64))
    batch = build_batch(_rollouts(torch.Generator().manual_seed(4)), PAD)
    part = batch.rows(torch.tensor([0, 3, 5]))
    assert len(rl_forward.length_chunks(part.valid.sum(1))) == 1
    with torch.no_grad():
        ours = rl_forward.sampled_hidden(model, part)
        plain = final_hidden(model, part.x, part.valid)[part.mask > 0]
    assert torch.equal(ours, plain)


def test_length_chunks_put_the_long_rows_apart_only_when_it_pays():
    chunks = rl_forward.length_chunks(torch.tensor([33, 100, 30, 33, 90, 12]))
    assert [c.tolist() for c in chunks] == [[1, 4], [0, 2, 3, 5]]
    assert [c.tolist() for c in rl_forward.length_chunks(torch.tensor([33, 40, 30, 33]))] == [[0, 1, 2, 3]]
    assert [c.tolist() for c in rl_forward.length_chunks(torch.tensor([7]))] == [[0]]
