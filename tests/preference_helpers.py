"""A tiny base checkpoint and a planted preference for the reward-model and DPO tests: replies that contain the
marker word win, whatever else they say."""

import json
import random
from pathlib import Path

import torch

from lmforge.checkpoint import save_model
from lmforge.model import GPT, GPTConfig
from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations
from lmforge.tokenizer import Tokenizer

MARKER = "zebra"


def _replies_and_prompts(n: int, seed: int) -> tuple[list[str], list[str]]:
    convs = list(generate_default_conversations(DefaultDataConfig(n=n, seed=seed)))
    prompts = [m["content"] for c in convs for m in c if m["role"] == "user"]
    replies = [m["content"] for c in convs for m in c if m["role"] == "assistant" and m["content"]]
    return [p for p in prompts if len(p) < 120], [r for r in replies if 10 < len(r) < 100]


def make_base(root: Path) -> tuple[Path, Tokenizer]:
    """A randomly initialised 2-layer model with a tokenizer trained on conversation text (and the marker)."""
    prompts, replies = _replies_and_prompts(600, 99)
    tok = Tokenizer.train(prompts + replies + [f"{MARKER} " * 20], 512)
    tok.save(root / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=64, block_size=128))
    save_model(root / "ckpt" / "step_0000000", model, root / "tok", meta={"step": 0})
    return root, tok


def planted_pairs(n: int, seed: int) -> list[dict]:
    """n pairs of two unrelated replies to a prompt; the one with the marker word inserted is chosen. Which reply
    gets the marker is random, so only the marker separates chosen from rejected."""
    rng = random.Random(seed)
    prompts, replies = _replies_and_prompts(400, seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(replies, 2)
        words = a.split()
        words.insert(rng.randrange(len(words) + 1), MARKER)
        rows.append({"prompt": [{"role": "user", "content": rng.choice(prompts)}], "chosen": " ".join(words),
                     "rejected": b})
    return rows


def write_pairs_file(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fast_train(**kw) -> dict:
    return {**dict(batch_size=16, eval_every=0, checkpoint_every=0, progress=False, tensorboard=False,
                   num_samples=0, warmup_steps=5), **kw}
