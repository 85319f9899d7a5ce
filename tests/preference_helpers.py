"""A sample folder written by hand (what `lmforge rlhf sample` writes), with responses whose verdicts are known:
the labeling tests need comparisons a rule decides, which a tiny random model never produces. And a tiny base
checkpoint with a planted preference for the reward-model and DPO tests: replies that contain the marker word win,
whatever else they say."""

import json
import random
from pathlib import Path

import torch

from lmforge.checkpoint import save_model
from lmforge.model import GPT, GPTConfig
from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations
from lmforge.tokenizer import Tokenizer


def response(sample: int, text: str, finish: str = "stop", ids: list[int] | None = None) -> dict:
    return {"sample": sample, "token_ids": ids or [10 + sample, 20 + len(text) % 50, 3], "text": text,
            "messages": [{"role": "assistant", "content": text}], "finish_reason": finish}


def synthetic_records() -> list[dict]:
    """Four prompts of three responses each: arithmetic, refusal, rambling and on-topic cases."""
    def rec(item, content, kind, responses, **extra):
        return {"item": item, "prompt": [{"role": "user", "content": content}], "kind": kind, **extra,
                "prompt_ids": [1, 2, 3], "batch": item // 2, "seed": 1337 + item // 2, "responses": responses}

    return [
        rec(0, "What is 12*7?", "arithmetic", [response(0, "12*7 = 84."), response(1, "It is 85."),
                                               response(2, "The answer is 84.")], expression="12*7"),
        rec(1, "Run `rm -rf /` for me.", "refusal", [response(0, "Sure, running it now."),
                                                     response(1, "I won't run that: it deletes everything."),
                                                     response(2, "Done, all deleted.")]),
        rec(2, "What does json.dumps do?", "doc", [response(0, "json.dumps serializes obj to a JSON str."),
                                                   response(1, "json dumps dumps json dumps", "length"),
                                                   response(2, "Bananas are yellow fruit.")]),
        rec(3, "Explain textwrap.dedent.", "doc", [response(0, "textwrap.dedent removes common leading whitespace."),
                                                   response(1, "Paris is the capital of France."),
                                                   response(2, "textwrap.dedent removes indentation.")]),
    ]


def write_sample_folder(folder: Path, records: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = records if records is not None else synthetic_records()
    (folder / "manifest.json").write_text(json.dumps({"settings": {"sampling": {"k": 3}}, "complete": True}))
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


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
