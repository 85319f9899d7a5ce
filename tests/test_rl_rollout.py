"""What RL rollouts need from the engine's session, exactly: tool outputs queued one token a step continue a row as
`append` does, and releasing finished rows from the batch changes no token or log-prob."""

from __future__ import annotations

import pytest
import torch

from lmforge.inference.engine import Engine
from lmforge.inference.sampling import SamplingParams
from lmforge.model import GPT, GPTConfig
from lmforge.utils import LmforgeError

PROMPTS = [[1, 5, 9, 14], [1, 7], [1, 3, 3, 8, 2, 11], [1, 20, 4], [1, 6, 6], [1, 30, 31, 32, 33]]


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return Engine(GPT(GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=96)))


def _greedy(**kw) -> SamplingParams:
    return SamplingParams(**{"temperature": 0.0, "max_tokens": 10, "stop_token_ids": [], **kw})


@pytest.mark.parametrize("penalties", [{}, dict(repetition_penalty=1.5, presence_penalty=0.5)])
def test_queued_forced_tokens_continue_like_append(engine, penalties):
    """Row 0 gets a tool output after its first token while the others decode on: queued (one token a step, in the
    others' decode forward) it continues with the same tokens and log-probs as after a batch-wide `append`, and the
    cache grows by one slot a step instead of by the output's length in every row. With penalties the forced tokens
    count as seen, as appended ones do (queue_forced writes the session's inference tensors: it runs in inference
    mode, as append does)."""
    forced = [[40, 41, 42, 43, 44], [], [50], [], [], []]
    runs = []
    for how in ("append", "queue_forced"):
        session = engine.session(PROMPTS, _greedy(**penalties))
        first = [e.token_id for e in session.step()]
        getattr(session, how)(forced)
        runs.append((first, session.run(), session.cache.length))
    (first_a, done_a, len_a), (first_q, done_q, len_q) = runs
    assert first_a == first_q
    for a, q in zip(done_a, done_q):
        assert a.token_ids == q.token_ids and a.finish_reason == q.finish_reason
        assert a.raw_logprobs == pytest.approx(q.raw_logprobs, abs=1e-5)
    assert len(done_q[0].token_ids) == 10  # a fresh segment with a fresh budget
    assert len_q < len_a


def test_queued_forced_rows_do_not_sample_until_fed(engine):
    session = engine.session(PROMPTS[:2], _greedy())
    session.step()
    session.queue_forced([[40, 41, 42], []])
    events = [session.step() for _ in range(4)]
    # row 0's first token (still pending), 40 and 41 fed, one a step; then 42 with a sample after it
    assert [e[0] is None for e in events] == [True, True, True, False]
    assert all(e[1] is not None for e in events)  # the other row samples every step


def test_releasing_finished_rows_changes_nothing(engine):
    free = engine.session(PROMPTS, _greedy()).run()
    # stop tokens that end rows at different steps: each row's own 2nd/4th/6th token
    stops = sorted({free[0].token_ids[1], free[2].token_ids[3], free[4].token_ids[5]})
    runs = []
    for release in (False, True):
        session = engine.session(PROMPTS, _greedy(stop_token_ids=stops), release_finished=release)
        runs.append((session.run(), session))
    (kept, _), (released, session) = runs
    assert len(session.held) < len(PROMPTS)  # finished rows left the batch
    assert [c.finish_reason for c in kept].count("stop") >= 2
    for a, b in zip(kept, released):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert a.raw_logprobs == pytest.approx(b.raw_logprobs, abs=1e-5)
    gone = next(i for i in range(len(PROMPTS)) if i not in session.held)
    with pytest.raises(LmforgeError, match=f"row {gone} has finished and was released"):
        session.append([[7] if i == gone else [] for i in range(len(PROMPTS))])


def test_queued_tokens_of_the_only_running_rows_go_in_one_forward(engine):
    """With no other row sampling there is no decode step to share: the whole queue is fed at once."""
    outs = []
    for how in ("append", "queue_forced"):
        session = engine.session(PROMPTS[:1], _greedy(max_tokens=4))
        session.step()
        before = session.cache.length
        getattr(session, how)([[40, 41, 42]])
        event = session.step()[0]
        assert event is not None and session.cache.length == before + 4  # its first token and the three
        outs.append(session.run()[0])
    assert outs[0].token_ids == outs[1].token_ids
    assert outs[0].raw_logprobs == pytest.approx(outs[1].raw_logprobs, abs=1e-5)
