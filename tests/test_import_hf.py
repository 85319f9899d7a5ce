"""`lmforge import hf`: Hugging Face Llama and Qwen3 folders become lmforge checkpoints that compute what
transformers computes (logits, greedy tokens), with a tokenizer that gives the same ids."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.checkpoint import checkpoint_tokenizer_dir, load_model, save_model
from lmforge.export.hf import export_hf
from lmforge.export.hf_import import import_hf
from lmforge.inference.engine import Engine
from lmforge.inference.sampling import SamplingParams
from lmforge.model import GPT, GPTConfig
from lmforge.tokenizer import SPECIAL_TOKENS, Tokenizer
from lmforge.tokenizer.patterns import GPT4_PATTERN

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

LINES = ["Once upon a time, a small dog met a cat in the garden.", "The cat said hello; the dog said hello back!",
         "def add(a, b):\n    return a + b  # 2 + 3 = 5", "héllo 世界 🙂 numbers 12345 and 678.",
         "They'll say it's fine, we're sure, I'd go.  Tabs\tand\nnew lines\n"] * 4
TEXTS = ["Once upon a time, the dog", "def add(a, b): return 2 + 3", "héllo 世界, the cat said 12345"]


def hf_tokenizer_json(path, split: str, extra_specials: tuple[str, ...] = ()) -> None:
    """A byte-level BPE trained by `tokenizers` on a few lines (ids: specials, the byte alphabet, then merges,
    unlike lmforge's order), with Llama 3's layout (Split then ByteLevel) or GPT-2's (ByteLevel's own regex)."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split == "gpt2")
    tok.pre_tokenizer = byte_level if split == "gpt2" else pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"), byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<s>", "</s>", "<pad>", *extra_specials],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(LINES, trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                            "pad_token": "<pad>"}))


def hf_model(arch: str, vocab: int, tied: bool):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
                  tie_word_embeddings=tied, bos_token_id=0, eos_token_id=1, pad_token_id=2, rope_theta=5000.0)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=16, **common))
    with torch.no_grad():  # random norms too, so a misplaced norm weight shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


def hf_folder(folder, arch: str = "llama", tied: bool = False, extra_specials: tuple[str, ...] = ()):
    """A complete Hugging Face folder: a tiny random model of `arch` and a `tokenizers`-trained tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    hf_tokenizer_json(folder, "llama3", extra_specials)
    vocab = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
    model = hf_model(arch, vocab, tied)
    model.save_pretrained(folder)
    return model


@pytest.mark.timeout(120)
@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen3", True)])
def test_imported_model_matches_transformers_logits_and_greedy(tmp_path, arch, tied):
    folder = tmp_path / "hf"
    model = hf_folder(folder, arch, tied)
    hf_tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    out, mapping = import_hf(folder, tmp_path / "ckpt")
    ours, ckpt = load_model(out)
    tok = Tokenizer.load(checkpoint_tokenizer_dir(ckpt))
    assert ours.config.qk_norm == (arch == "qwen3") and ours.config.tie_embeddings == tied
    assert ours.config.n_kv_head == 2 and tok.vocab_size == ours.config.vocab_size
    assert mapping.new_specials == [n for n in SPECIAL_TOKENS if n not in ("<|bos|>", "<|end|>", "<|pad|>")]
    back = {lm: hf for hf, lm in mapping.lmforge_ids.items()}
    assert any(hf != lm for hf, lm in mapping.lmforge_ids.items())  # the vocabulary really was renumbered
    for text in TEXTS:
        hf_ids = hf_tok.encode(text, add_special_tokens=False).ids
        ids = tok.encode(text)
        assert [back[i] for i in ids] == hf_ids  # the same tokens, in lmforge's numbering
        with torch.no_grad():
            theirs = model(torch.tensor([hf_ids])).logits[0]
            mine = ours(torch.tensor([ids]))[0][0]
        order = torch.tensor(sorted(back))
        torch.testing.assert_close(mine[:, order], theirs[:, [back[i] for i in order.tolist()]],
                                   atol=1e-5, rtol=1e-5)
    prompt = tok.encode(TEXTS[0])
    steps = 12
    mine = Engine(ours, tok).generate(prompt, SamplingParams(temperature=0, max_tokens=steps, stop_token_ids=[]))
    with torch.no_grad():
        gen = model.generate(torch.tensor([[back[i] for i in prompt]]), max_new_tokens=steps, do_sample=False,
                             eos_token_id=None, pad_token_id=2)[0, len(prompt):].tolist()
    assert [back[i] for i in mine[0][0].token_ids] == gen


@pytest.mark.parametrize("nfc", [False, True])
def test_gpt2_style_byte_level_tokenizer_gives_the_same_ids(tmp_path, nfc):
    hf_tokenizer_json(tmp_path, "gpt2")
    from lmforge.export.hf_tokenizer_import import import_tokenizer

    if nfc:  # Qwen's tokenizers NFC-normalise: accepted, and the import says lmforge does not
        spec = json.loads((tmp_path / "tokenizer.json").read_text())
        spec["normalizer"] = {"type": "NFC"}
        (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    converted = import_tokenizer(tmp_path)
    assert any("NFC" in note for note in converted.notes) == nfc
    hf_tok = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    back = {lm: hf for hf, lm in converted.lmforge_ids.items()}
    for text in TEXTS + LINES[:5]:
        assert [back[i] for i in converted.tokenizer.encode(text)] == hf_tok.encode(text).ids


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overrides", [{}, {"qk_norm": True, "tie_embeddings": True}])
def test_export_import_export_round_trip(tmp_path, overrides):
    """lmforge -> Hugging Face -> lmforge gives back the same weights and tokenizer (every special token maps to
    itself), and exporting again writes the same tensors and tokenizer.json."""
    from safetensors.torch import load_file

    tok = Tokenizer.train(LINES, vocab_size=330)
    tok_dir = tok.save(tmp_path / "tok")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64,
                    **overrides)
    model = GPT(cfg).eval()
    save_model(tmp_path / "a", model, tok_dir)
    export_hf(tmp_path / "a", tmp_path / "hf1")
    _, mapping = import_hf(tmp_path / "hf1", tmp_path / "b")
    assert mapping.new_specials == [] and mapping.dropped == []
    back, ckpt = load_model(tmp_path / "b")
    assert back.config.to_dict() == cfg.to_dict()
    assert Tokenizer.load(checkpoint_tokenizer_dir(ckpt)).hash == tok.hash
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    export_hf(tmp_path / "b", tmp_path / "hf2")
    first, second = load_file(tmp_path / "hf1" / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert (tmp_path / "hf1" / "tokenizer.json").read_bytes() == (tmp_path / "hf2" / "tokenizer.json").read_bytes()


def test_the_cli_imports_and_says_which_tokens_are_new_and_dropped(tmp_path):
    from hostile import run_cli

    hf_folder(tmp_path / "hf", extra_specials=("<|im_start|>", "<think>"))
    outcome = run_cli(["import", "hf", tmp_path / "hf", "--out", tmp_path / "ckpt", "--block-size", "32"])
    assert outcome.code == 0, outcome.stderr
    assert "new special tokens" in outcome.stdout and "<|user|>" in outcome.stdout
    assert "dropped added tokens (now ordinary text): <think>, <|im_start|>" in outcome.stdout
    model, ckpt = load_model(tmp_path / "ckpt")
    assert model.config.block_size == 32
    meta = json.loads((ckpt / "config.json").read_text())["imported_from"]
    assert meta["dropped_added_tokens"] == ["<think>", "<|im_start|>"]
    # and it fine-tunes like any checkpoint (here with LoRA), which is what importing is for
    from lmforge.posttrain.sft import SFTConfig, run_sft

    fast = dict(batch_size=4, eval_every=0, checkpoint_every=0, progress=False, tensorboard=False, num_samples=0,
                warmup_steps=1, max_steps=2)
    summary = run_sft(SFTConfig(default_conversations=40, lora_rank=2, train_overrides=fast), ckpt, tmp_path / "sft")
    assert summary["step"] == 2 and summary["lora"]["adapter_params"] > 0
