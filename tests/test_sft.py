"""SFT: masked targets, one conversation per row, exact resume, and a tiny run that learns the chat format."""

import json

import pytest
import torch

from lmforge.checkpoint import load_model, save_model
from lmforge.model import GPT, GPTConfig
from lmforge.tokenizer.chat_format import ChatTokens, prompt_of, render_conversation
from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations
from lmforge.posttrain.sft import SFTBatches, SFTConfig, collate, encode_examples, run_sft
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A randomly initialised tiny model with a tokenizer trained on conversation text: a base checkpoint."""
    root = tmp_path_factory.mktemp("base")
    convs = list(generate_default_conversations(DefaultDataConfig(n=800, seed=99)))
    tok = Tokenizer.train([m["content"] for c in convs for m in c], 512)
    tok.save(root / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=64, block_size=256))
    save_model(root / "ckpt" / "step_0000000", model, root / "tok", meta={"step": 0})
    return root, tok


def _fast(**kw):
    return {**dict(batch_size=16, eval_every=0, checkpoint_every=0, progress=False, tensorboard=False, num_samples=0,
                   warmup_steps=5), **kw}


def test_collate_masks_everything_but_the_assistant(base):
    _, tok = base
    convs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
             [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 1+1?"},
              {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": "1+1"}]},
              {"role": "tool", "name": "calculator", "content": "2"}, {"role": "assistant", "content": "2"}]]
    ex = encode_examples(tok, convs, 257)
    t = ChatTokens.of(tok)
    x, y = collate(ex, t.pad, pad_multiple=16)
    assert x.shape == y.shape and x.shape[1] % 16 == 0
    for r, (ids, mask) in enumerate(ex):
        n = len(ids) - 1
        assert x[r, :n].tolist() == ids[:-1] and (x[r, n:] == t.pad).all() and (y[r, n:] == -1).all()
        want = [ids[i + 1] if mask[i + 1] else -1 for i in range(n)]
        assert y[r, :n].tolist() == want
        assert y[r, n - 1].item() == t.end  # the last target is the assistant's <|end|>
        assert (x[r] == t.bos).sum() == 1  # one conversation per row: nothing to attend across
    learned = tok.decode([i for i in y[1].tolist() if i >= 0])
    assert learned == "<|tool_call|>calculator\n1+1<|tool_call_end|>2<|end|>"


def test_batches_are_deterministic_and_resume_exactly(base):
    _, tok = base
    ex = encode_examples(tok, generate_default_conversations(DefaultDataConfig(n=100, seed=3)), 257)
    a = SFTBatches(ex, 8, ChatTokens.of(tok).pad, seed=1)
    first = [a.next_batch() for _ in range(20)]  # crosses an epoch boundary (13 batches per epoch)
    b = SFTBatches(ex, 8, ChatTokens.of(tok).pad, seed=1)
    for _ in range(7):
        b.next_batch()
    c = SFTBatches(ex, 8, ChatTokens.of(tok).pad, seed=1)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    for (x1, y1), (x2, y2) in zip(first[7:], (c.next_batch() for _ in range(13))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert 0 <= a.padding_frac() < 0.5
    with pytest.raises(Exception, match="different data"):
        SFTBatches(ex[:50], 8, 0, seed=1).load_state_dict(b.state_dict())


@pytest.mark.timeout(120)
def test_sft_resume_is_exact(base, tmp_path):
    root, _ = base
    cfg = SFTConfig(default_conversations=120, train_overrides=_fast(max_steps=6, checkpoint_every=3, keep_checkpoints=0))
    full = run_sft(cfg, root, tmp_path / "a")
    run_sft(cfg, root, tmp_path / "b")
    import shutil

    shutil.rmtree(tmp_path / "b" / "ckpt" / "step_0000006")  # as if it had died after step 3
    resumed = run_sft(cfg, root, tmp_path / "b")
    assert resumed["loss"] == full["loss"]
    wa, _ = load_model(tmp_path / "a")
    wb, _ = load_model(tmp_path / "b")
    for (k, p), q in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(p, q), k
    assert (tmp_path / "a" / "sft_data.jsonl").is_file()
    # the generated default data refuses no real harmful request: `security scan` reads "unseen" for every source
    from lmforge.security.lineage import trained_refusals

    assert full["data"]["refusal_prompts"] == {"complete": True, "sources": []}
    assert trained_refusals(tmp_path / "a").seen("any request") is False


@pytest.mark.timeout(180)
def test_tiny_sft_learns_to_end_its_turns(base, tmp_path):
    """Before SFT a random model never closes a turn; after 200 steps it ends most answers with <|end|>.

    Measured: 0.875 (2 threads) and 1.0 (1 thread) of 24 held-out prompts; at 100 steps and 12 prompts it sat at
    0.58-0.67, too close to the bar to be a stable test."""
    from lmforge.inference.chat import ChatConfig, ChatSession
    from lmforge.inference.engine import Engine

    root, tok = base
    held = list(generate_default_conversations(DefaultDataConfig(n=24, seed=5)))
    prompts = [prompt_of(c) for c in held]

    def compliance(path, max_tokens):
        engine = Engine.from_checkpoint(str(path))
        ended = 0
        for p in prompts:
            chat = ChatSession(engine, {}, config=ChatConfig(temperature=0.0, max_tokens=max_tokens))
            chat.messages = list(p)
            ended += chat.respond(None)["ended"]
        return ended / len(prompts)

    before = compliance(root, 24)
    cfg = SFTConfig(default_conversations=600, train_overrides=_fast(max_steps=200, lr=1e-2, muon_lr=0.04))
    summary = run_sft(cfg, root, tmp_path / "sft")
    after = compliance(tmp_path / "sft", 64)
    assert before <= 0.1 and after >= 0.6, (before, after)
    assert summary["val_loss"] < 4.0
    ids, mask = render_conversation(tok, held[0])
    assert sum(mask) > 0


@pytest.mark.timeout(120)
def test_chat_and_eval_cli(base, tmp_path, monkeypatch, capsys):
    """`lmforge chat` handles /save, /reset and /quit around a turn; `lmforge eval sft` prints and writes JSON."""
    from lmforge.cli import main

    root, _ = base
    saved = tmp_path / "chat.json"
    lines = iter(["hello", f"/save {saved}", "/reset", f"/save {tmp_path / 'empty.json'}", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--checkpoint", str(root), "--system", "Be brief.", "--max-tokens", "8", "--seed", "1",
                 "--threads", "1"]) == 0
    messages = json.loads(saved.read_text())["messages"]
    assert messages[:2] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    assert messages[2]["role"] == "assistant"
    assert json.loads((tmp_path / "empty.json").read_text())["messages"] == [{"role": "system", "content": "Be brief."}]
    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    assert main(["eval", "sft", "--checkpoint", str(root), "--prompts", "2", "--arithmetic", "1", "--max-tokens", "8",
                 "--samples", "2", "--no-progress", "--threads", "1", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "format compliance" in printed and "| user" in printed
    result = json.loads(out_json.read_text())
    for key in ("format_compliance", "tool_call_rate", "tool_call_accuracy", "accuracy_with_tool",
                "accuracy_without_tool", "masked_val_loss"):
        assert key in result
    assert result["format_compliance"] == 0.0 and result["masked_val_loss"] > 5  # a random model: no format yet
    low, high = result["accuracy_with_tool_wilson95"]
    assert 0.0 <= low <= result["accuracy_with_tool"] <= high <= 1.0 and high - low > 0.5  # one question: wide
    assert 0.0 <= result["result_copy_errors"] <= result["tool_call_accuracy"]
    assert main(["eval", "sft", "--checkpoint", str(root), "--prompts", "0", "--arithmetic", "1", "--max-tokens", "8",
                 "--no-progress", "--threads", "1", "--json", str(out_json)]) == 0
    assert "not measured (--prompts 0)" in capsys.readouterr().out  # not a 0% compliance that nothing measured
    assert json.loads(out_json.read_text())["format_compliance"] is None
