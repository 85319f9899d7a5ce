"""LoRA for SFT and DPO: adapters start as a no-op, only they train and are saved, a resume continues exactly,
and the adapted model reads back (and merges, and exports) as the model that was trained."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmforge.checkpoint import load_model, train_checkpoints
from lmforge.posttrain.sft import SFTConfig, run_sft
from lmforge.train.lora import LoRAFields, add_adapters
from lmforge.utils import LmforgeError
from test_sft import _fast, base  # noqa: F401 - the fixture: a tiny base checkpoint and its tokenizer

LORA = dict(lora_rank=4, lora_alpha=8.0)


def _cfg(**kw) -> SFTConfig:
    return SFTConfig(default_conversations=120, **{**LORA, **kw.pop("lora", {})},
                     train_overrides=_fast(**{"max_steps": 6, "lr": 1e-2, **kw}))


def test_an_adapter_at_init_changes_nothing_and_freezes_the_model(base):
    root, tok = base
    model, ckpt = load_model(root)
    ids = torch.tensor([tok.encode("What is the capital of France?")])
    before = model(ids)[0]
    n = add_adapters(model, LoRAFields(**LORA), ckpt)
    assert torch.equal(model(ids)[0], before)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert all(".lora_" in k for k in model.state_dict())  # what a checkpoint of the run holds


@pytest.mark.timeout(180)
def test_sft_with_lora_learns_saves_adapters_only_and_merges_exactly(base, tmp_path):
    root, tok = base
    base_model, base_ckpt = load_model(root)
    summary = run_sft(_cfg(max_steps=12, lora={"merge": True}), root, tmp_path / "run")
    ckpt = train_checkpoints(tmp_path / "run")[-1]
    losses = [r["loss"] for r in map(json.loads,
                                      (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < losses[0]  # the adapters learn
    saved = load_file(ckpt / "model.safetensors")
    assert saved and all(".lora_" in k for k in saved)  # only the adapters are written...
    size = (ckpt / "model.safetensors").stat().st_size
    assert size < 0.25 * (base_ckpt / "model.safetensors").stat().st_size  # ...a small fraction of the model
    assert summary["lora"]["adapter_params"] == sum(t.numel() for t in saved.values())

    adapted, _ = load_model(tmp_path / "run")  # the base with the adapters added
    specials = len(tok.special_tokens)
    for name, p in base_model.state_dict().items():
        now = adapted.state_dict()[name]
        if name in ("tok_emb.weight", "lm_head.weight"):  # only the special tokens' rows were trained
            assert torch.equal(now[:-specials], p[:-specials]) and not torch.equal(now[-specials:], p[-specials:])
            continue
        targeted = any(f".{t}.weight" in name for t in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"))
        assert torch.equal(now, p) != targeted, name  # only the adapted matrices moved
    merged, merged_ckpt = load_model(summary["merged_checkpoint"])
    assert "lora" not in json.loads((merged_ckpt / "config.json").read_text())  # an ordinary checkpoint
    ids = torch.tensor([tok.encode("Hello, who are you?")])
    with torch.no_grad():
        trained = _model_with_saved_adapters(root, ckpt)
        torch.testing.assert_close(adapted(ids)[0], trained(ids)[0], atol=1e-6, rtol=1e-6)
        assert torch.equal(merged(ids)[0], adapted(ids)[0])


def _model_with_saved_adapters(root, ckpt):
    """The base model with adapters attached as in training (unmerged), holding the saved adapter values."""
    from lmforge.train.lora import load_adapters

    model, base_ckpt = load_model(root)
    add_adapters(model, LoRAFields(**LORA), base_ckpt)
    load_adapters(model, load_file(ckpt / "model.safetensors"), ckpt)
    return model


@pytest.mark.timeout(180)
def test_lora_sft_resume_is_exact(base, tmp_path):
    root, _ = base
    run_sft(SFTConfig(default_conversations=120, train_overrides=_fast(max_steps=1)), root, tmp_path / "full")
    cfg = _cfg(max_steps=6, checkpoint_every=3, keep_checkpoints=0)
    full = run_sft(cfg, root, tmp_path / "a")
    run_sft(cfg, root, tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "ckpt" / "step_0000006")  # as if it had died after step 3
    resumed = run_sft(cfg, root, tmp_path / "b")
    assert resumed["loss"] == full["loss"]
    a = load_file(tmp_path / "a" / "ckpt" / "step_0000006" / "model.safetensors")
    b = load_file(tmp_path / "b" / "ckpt" / "step_0000006" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for other in ({"lora_rank": 8}, {"lora_alpha": 4.0}, {"lora_rank": 0}):  # other adapters cannot continue
        with pytest.raises(LmforgeError, match="--lora-rank: .* holds a run of rank 4"):
            run_sft(_cfg(max_steps=8, checkpoint_every=3, lora=other), root, tmp_path / "b")
    with pytest.raises(LmforgeError, match="holds a run of full fine-tuning"):
        run_sft(_cfg(max_steps=2), root, tmp_path / "full")  # a LoRA run in a full run's folder


@pytest.mark.timeout(180)
def test_a_lora_checkpoint_exports_and_refuses_a_changed_base(base, tmp_path):
    from lmforge.checkpoint import save_model
    from lmforge.export.hf import export_hf

    root, tok = base
    own_base = tmp_path / "base"
    model, ckpt = load_model(root)
    save_model(own_base, model, ckpt / "tokenizer")
    run_sft(_cfg(max_steps=2), own_base, tmp_path / "run")
    transformers = pytest.importorskip("transformers")
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    adapted, _ = load_model(tmp_path / "run")
    ids = torch.tensor([tok.encode("Hello there")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, adapted(ids)[0], atol=1e-5, rtol=1e-5)
    from hostile import run_cli

    from lmforge.inference.paramfile import load_params

    outcome = run_cli(["export", "params", "--checkpoint", tmp_path / "run", "--out", tmp_path / "model.bin"])
    assert outcome.code == 0, outcome.stderr
    exported = load_params(tmp_path / "model.bin")
    assert all(torch.equal(p, adapted.state_dict()[k]) for k, p in exported.state_dict().items())
    with torch.no_grad():  # the base checkpoint rewritten at the same path with other weights
        model.tok_emb.weight.add_(1.0)
    save_model(own_base, model, ckpt / "tokenizer")
    with pytest.raises(LmforgeError, match="changed since the adapters were trained"):
        load_model(tmp_path / "run")


@pytest.mark.timeout(180)
def test_dpo_with_lora_raises_the_margin_training_adapters_only(tmp_path):
    from preference_helpers import fast_train, make_base, planted_pairs, write_pairs_file

    from lmforge.posttrain.dpo import DPOConfig, run_dpo

    root, _ = make_base(tmp_path / "base")
    data = write_pairs_file(tmp_path / "pairs.jsonl", planted_pairs(200, 1))
    cfg = DPOConfig(val_last=40, lora_rank=4, lora_alpha=8.0, merge=True,
                    train_overrides=fast_train(max_steps=20, batch_size=8, lr=1e-2))
    run_sft(_cfg(max_steps=2), root, tmp_path / "sft")  # adapters on adapters: DPO's base is a LoRA checkpoint
    summary = run_dpo(cfg, tmp_path / "sft", tmp_path / "run", [str(data)])
    assert summary["eval"]["val_margin"] > 0  # evaluated on the adapted model (base + adapters)
    saved = load_file(train_checkpoints(tmp_path / "run")[-1] / "model.safetensors")
    assert saved and all(".lora_" in k for k in saved)
    merged, _ = load_model(summary["merged_checkpoint"])
    adapted, _ = load_model(tmp_path / "run")
    assert all(torch.equal(p, adapted.state_dict()[k]) for k, p in merged.state_dict().items())


@pytest.mark.parametrize("fields,flag", [({"lora_rank": -1}, "--lora-rank"), ({"lora_rank": 4, "lora_alpha": 0},
                                                                              "--lora-alpha"),
                                         ({"lora_rank": 4, "lora_targets": ["q_proj"]}, "--lora-targets"),
                                         ({"merge": True}, "--merge")])
def test_bad_lora_settings_are_refused_naming_the_flag(fields, flag):
    with pytest.raises(LmforgeError, match=flag):
        SFTConfig(**fields)


def test_tied_embeddings_share_their_trained_rows(base, tmp_path):
    """With a tied head, the special tokens' rows are one set of parameters, saved once, merged into both."""
    from lmforge.checkpoint import checkpoint_tokenizer_dir, save_model
    from lmforge.model import GPT, GPTConfig

    root, tok = base
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=64, block_size=64,
                          tie_embeddings=True)).eval()
    tok_dir = checkpoint_tokenizer_dir(load_model(root)[1])
    save_model(tmp_path / "base", model, tok_dir)
    add_adapters(model, LoRAFields(**LORA), tmp_path / "base")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name or "lora_rows" in name:
                p.normal_(0, 0.1)
    assert model.lm_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()  # computed, not stored
    assert torch.equal(model.lm_head.weight, model.tok_emb.weight)  # but the same rows
    save_model(tmp_path / "adapted", model, tok_dir)
    saved = load_file(tmp_path / "adapted" / "model.safetensors")
    assert "tok_emb.lora_rows" in saved and not any(k.startswith("lm_head") for k in saved)
    merged, _ = load_model(tmp_path / "adapted")
    ids = torch.tensor([[tok.bos_id, *tok.encode("Hello"), tok.special_tokens["<|user|>"]]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids)[0], model(ids)[0], atol=1e-6, rtol=1e-6)
    assert merged.lm_head.weight is merged.tok_emb.weight
