"""Shared by test_export_params.py, test_runner.py and the eval tests: a small trained tokenizer and tiny nontrivial models.

The tokenizer trains on text that every Python install has (the source of a few standard-library modules, which
no one in this project edits, so the merges stay fixed) plus a few multilingual lines: no downloaded data.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from lmforge.checkpoint import save_model
from lmforge.model import GPT, GPTConfig
from lmforge.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
MULTILINGUAL = [
    "Grüße aus Köln: naïve café, Straße und Übermut.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "日本語のテキストと漢字、ひらがな、カタカナ。",
    "한국어 텍스트입니다. 🙂 emoji 👍🏽 and ∑ x² ≤ ½",
] * 20


def corpus() -> list[str]:
    import json.decoder
    import textwrap

    texts = [Path(m.__file__).read_text(encoding="utf-8") for m in (textwrap, json.decoder)]
    return [t[i:i + 4000] for t in texts for i in range(0, len(t), 4000)] + MULTILINGUAL


@functools.lru_cache(maxsize=None)
def tokenizer(vocab_size: int = 700) -> Tokenizer:
    return Tokenizer.train(corpus(), vocab_size=vocab_size)


def tiny_model(vocab_size: int, seed: int = 0, **overrides) -> GPT:
    """A 2-layer model whose random weights are large enough that its logits are far from uniform."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=96, qk_norm=True,
               init_std=0.15, rope_theta=500.0)
    model = GPT(GPTConfig(**{**cfg, **overrides})).eval()
    with torch.no_grad():  # norms away from 1 so that their weights are exercised too
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.mul_(1 + 0.3 * torch.randn_like(p))
    return model


def saved_tiny_checkpoint(root: Path, **overrides) -> tuple[Tokenizer, GPT]:
    """The shared tokenizer saved as ROOT/tok and a tiny model saved as checkpoint ROOT/ckpt, both returned so a
    test can compare what it reads back (through a server, a parameter file) with the originals."""
    tok = tokenizer()
    model = tiny_model(tok.vocab_size, **overrides)
    save_model(root / "ckpt", model, tok.save(root / "tok"))
    return tok, model


# One calculator turn, as SFT teaches it: a model that memorized it makes a call the runner and a user's loop must run.
CALCULATOR_CONVERSATION = [{"role": "user", "content": "What is 37 * 48?"},
                           {"role": "assistant", "content": "",
                            "tool_calls": [{"name": "calculator", "arguments": "37 * 48"}]},
                           {"role": "tool", "name": "calculator", "content": "1776"},
                           {"role": "assistant", "content": "It is 1776."}]


def memorized_chat_model(tok, conversation: list[dict]):
    """The tiny model trained until it answers with `conversation`'s assistant turn, token for token (greedy)."""
    from lmforge.tokenizer.chat_format import render_conversation

    ids, _ = render_conversation(tok, conversation)
    model = tiny_model(tok.vocab_size, seed=2, init_std=0.02).train()
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model(x)[0].flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    return model.eval()


def compile_runner(out: Path, *flags: str) -> Path:
    """runner/run.c built with the system C compiler, warnings on (any warning fails the test)."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    r = subprocess.run([cc, "-O3", "-std=c99", "-Wall", "-Wextra", *flags, "-o", str(out), str(ROOT / "runner" / "run.c"),
                        "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", f"run.c compiles with warnings:\n{r.stderr}"
    return out
