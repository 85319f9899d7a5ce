"""SamplingParams: every field is checked once, with an error that names it as the CLI and the HTTP API spell it,
and every value it accepts samples without NaN, overflow or an out-of-range id."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.inference.sampling import (
    MAX_N,
    MAX_PENALTY,
    MAX_STOP_STRINGS,
    MAX_TEMPERATURE,
    MAX_TOTAL_TOKENS,
    MIN_TEMPERATURE,
    SamplingParams,
    sample,
)
from lmforge.utils import LmforgeError

NAN, INF = float("nan"), float("inf")

REFUSED = [
    ({"temperature": -1.0}, "temperature (--temperature)"),
    ({"temperature": INF}, "temperature (--temperature)"),
    ({"temperature": NAN}, "temperature (--temperature)"),
    ({"temperature": MIN_TEMPERATURE / 10}, "temperature (--temperature)"),  # logits / t would overflow
    ({"temperature": MAX_TEMPERATURE * 2}, "temperature (--temperature)"),
    ({"temperature": "0.7"}, "temperature (--temperature)"),
    ({"temperature": 10**400}, "temperature (--temperature)"),
    ({"top_p": 2.0}, "top_p (--top-p)"),
    ({"top_p": 0.0}, "top_p (--top-p)"),
    ({"top_p": NAN}, "top_p (--top-p)"),
    ({"top_k": -1}, "top_k (--top-k)"),
    ({"top_k": 2.5}, "top_k (--top-k)"),
    ({"top_k": True}, "top_k (--top-k)"),
    ({"min_p": -0.1}, "min_p (--min-p)"),
    ({"min_p": 1.5}, "min_p (--min-p)"),
    ({"repetition_penalty": 0.0}, "repetition_penalty (--repetition-penalty)"),
    ({"repetition_penalty": INF}, "repetition_penalty (--repetition-penalty)"),
    ({"frequency_penalty": NAN}, "frequency_penalty (--frequency-penalty)"),
    ({"frequency_penalty": MAX_PENALTY * 10}, "frequency_penalty (--frequency-penalty)"),
    ({"presence_penalty": -INF}, "presence_penalty (--presence-penalty)"),
    ({"seed": 2**64}, "seed (--seed)"),
    ({"seed": -1}, "seed (--seed)"),
    ({"seed": "42"}, "seed (--seed)"),
    ({"n": 0}, "n (--n)"),
    ({"n": 1_000_000}, "n (--n)"),  # was killed by the kernel at 24 GB
    ({"max_tokens": 0}, "max_tokens (--max-tokens)"),
    ({"max_tokens": 10**12}, "max_tokens (--max-tokens)"),
    ({"n": MAX_N, "max_tokens": MAX_TOTAL_TOKENS // MAX_N + 1}, "max_tokens (--max-tokens)"),
    ({"stop": "STOP"}, "stop (--stop)"),  # a string is not a list of strings
    ({"stop": [""]}, "stop (--stop)"),  # would stop before the first token
    ({"stop": ["x"] * (MAX_STOP_STRINGS + 1)}, "stop (--stop)"),
    ({"stop": ["x" * 100_000]}, "stop (--stop)"),
    ({"stop": [3]}, "stop (--stop)"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stop_token_ids": "1 2"}, "stop_token_ids"),
    ({"stop_token_ids": list(range(5000))}, "stop_token_ids"),
]


@pytest.mark.parametrize("fields, culprit", REFUSED, ids=[repr(f)[:60] for f, _ in REFUSED])
def test_bad_field_is_one_error_naming_it(fields, culprit):
    with pytest.raises(LmforgeError) as e:
        SamplingParams(**fields)
    message = str(e.value)
    assert message.startswith(culprit + " must be") and "\n" not in message
    assert len(message) < 200  # a hostile value is shown cut short


def test_bounds_themselves_are_accepted_and_normalised():
    p = SamplingParams(temperature=0, top_p=1, min_p=1, top_k=0, repetition_penalty=MAX_PENALTY,
                       presence_penalty=MAX_PENALTY, frequency_penalty=-MAX_PENALTY, seed=2**64 - 1, n=MAX_N,
                       max_tokens=MAX_TOTAL_TOKENS // MAX_N, stop=("a", "b"), stop_token_ids=(5,))
    assert p.greedy and isinstance(p.temperature, float) and isinstance(p.top_p, float)
    assert p.stop == ["a", "b"] and p.stop_token_ids == [5]
    assert SamplingParams(temperature=MIN_TEMPERATURE).temperature == MIN_TEMPERATURE
    assert SamplingParams(temperature=MAX_TEMPERATURE, seed=0).seed == 0
    torch.Generator().manual_seed(p.seed)  # the largest seed is one torch takes


finite = dict(allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    temperature=st.one_of(st.just(0.0), st.floats(MIN_TEMPERATURE, MAX_TEMPERATURE)),
    top_k=st.integers(0, 80),
    top_p=st.floats(0.0, 1.0, exclude_min=True),
    min_p=st.floats(0.0, 1.0),
    repetition_penalty=st.floats(1 / MAX_PENALTY, MAX_PENALTY),
    frequency_penalty=st.floats(-MAX_PENALTY, MAX_PENALTY, **finite),
    presence_penalty=st.floats(-MAX_PENALTY, MAX_PENALTY, **finite),
    scale=st.sampled_from([1.0, 30.0, 1000.0]),
)
def test_every_accepted_value_samples_a_valid_token(temperature, top_k, top_p, min_p, repetition_penalty,
                                                    frequency_penalty, presence_penalty, scale):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                            presence_penalty=presence_penalty, seed=1)
    gen = torch.Generator().manual_seed(params.seed)
    logits = torch.randn(3, 64, generator=gen) * scale
    counts = torch.randint(0, 4, (3, 64), generator=gen).float()  # every token may have been used
    tokens, sampled_lp, raw_lp = sample(logits, params, gen, seen=counts > 0, counts=counts)
    assert tokens.shape == (3,) and bool(((tokens >= 0) & (tokens < 64)).all())
    assert all(math.isfinite(x) for x in sampled_lp.tolist() + raw_lp.tolist())


def test_flags_sampling():
    """`generate` refuses a bad sampling flag before it loads anything: exit 2, one line naming the flag."""
    from hostile import assert_refused, run_cli

    rows = [
        (["--temperature", "-1"], "--temperature"),
        (["--temperature", "inf"], "--temperature"),
        (["--top-p", "2"], "--top-p"),
        (["--top-k", "-3"], "--top-k"),
        (["--min-p", "nan"], "--min-p"),
        (["--frequency-penalty", "nan"], "--frequency-penalty"),
        (["--presence-penalty", "1e300"], "--presence-penalty"),
        (["--repetition-penalty", "0"], "--repetition-penalty"),
        (["--seed", str(2**64)], "--seed"),
        (["--seed", "-5"], "--seed"),
        (["--n", "1000000"], "--n"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--stop", ""], "--stop"),
    ]
    for flags, culprit in rows:
        assert_refused(run_cli(["generate", "--checkpoint", "no-such-run", "--prompt", "hi", *flags]), culprit)
