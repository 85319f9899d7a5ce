"""The GPT: shapes, causality, the KV-cache path, configs, checkpoints and the size/cost report."""

from __future__ import annotations

import pytest
import torch

from lmforge.checkpoint import load_model, save_model, verify_checkpoint
from lmforge.model import GPT, KVCache, GPTConfig
from lmforge.utils import LmforgeError

SMALL = dict(vocab_size=97, n_layer=2, n_head=4, n_embd=32, block_size=32)
VARIANTS = {
    "llama": {},
    "gqa-qknorm-tied": dict(n_kv_head=2, qk_norm=True, tie_embeddings=True),
    "nanogpt": dict(norm="layernorm", pos="learned", mlp="gelu"),
    "relu2": dict(mlp="relu2", n_kv_head=1),
}


def make(variant: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**SMALL, **VARIANTS[variant])).eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_loss(variant):
    model = make(variant)
    idx = torch.randint(0, 97, (3, 11))
    logits, loss = model(idx)
    assert logits.shape == (3, 11, 97) and loss is None
    targets = torch.randint(0, 97, (3, 11))
    targets[:, :5] = -1
    _, loss = model(idx, targets)
    # At init the model is close to uniform, so its loss is near log(vocab).
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.5
    targets[:] = -1
    targets[0, 3] = 42
    _, one = model(idx, targets)
    manual = torch.nn.functional.cross_entropy(logits[0, 3][None], torch.tensor([42]))
    torch.testing.assert_close(one, manual)


def test_parameter_names_are_the_contract():
    names = set(dict(make("gqa-qknorm-tied").named_parameters()))
    for n in ("tok_emb.weight", "norm.weight", "layers.1.attn.wq.weight", "layers.1.attn.wk.weight",
              "layers.1.attn.wv.weight", "layers.1.attn.wo.weight", "layers.1.attn.q_norm.weight",
              "layers.1.attn.k_norm.weight", "layers.0.mlp.w_gate.weight", "layers.0.mlp.w_up.weight",
              "layers.0.mlp.w_down.weight", "layers.0.attn_norm.weight", "layers.0.mlp_norm.weight"):
        assert n in names, n
    assert "lm_head.weight" in dict(make("llama").named_parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(variant):
    """Changing the token at position t never changes the logits at positions before t."""
    model = make(variant)
    idx = torch.randint(0, 97, (1, 20))
    base, _ = model(idx)
    for t in (0, 7, 19):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % 97
        out, _ = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_matches_full_forward(variant):
    model = make(variant)
    idx = torch.randint(0, 97, (2, 24))
    full, _ = model(idx)
    cache = KVCache(model.config, batch_size=2, max_len=24)
    pieces = [model(idx[:, :10], cache=cache)[0]]
    for t in range(10, 20):
        pieces.append(model(idx[:, t:t + 1], cache=cache)[0])
    pieces.append(model(idx[:, 20:], cache=cache)[0])
    assert cache.length == 24
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-5)


def test_context_longer_than_the_model_is_refused():
    model = make("llama")
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_config_round_trip_and_validation():
    cfg = GPTConfig.from_preset("tiny", qk_norm=True)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.from_preset("huge-nonexistent")
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="unknown GPTConfig"):
        GPTConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("variant", ["llama", "gqa-qknorm-tied"])
def test_checkpoint_round_trip(tmp_path, variant):
    model = make(variant, seed=3)
    save_model(tmp_path / "ck", model, meta={"note": "x"})
    loaded, folder = load_model(tmp_path / "ck")
    assert folder == tmp_path / "ck"
    idx = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)
    if model.config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.tok_emb.weight
    assert verify_checkpoint(folder)["note"] == "x"


def test_corrupt_or_truncated_checkpoint_is_refused(tmp_path):
    save_model(tmp_path / "ck", make("llama"))
    weights = tmp_path / "ck" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped bit pattern deep inside a tensor: the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(LmforgeError, match="model.safetensors"):
        load_model(tmp_path / "ck")
    save_model(tmp_path / "ck2", make("llama"))
    weights = tmp_path / "ck2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(LmforgeError, match="model.safetensors"):
        load_model(tmp_path / "ck2")
    (tmp_path / "ck2" / "config.json").write_text("{not json")
    with pytest.raises(LmforgeError, match="config.json"):
        load_model(tmp_path / "ck2")


def test_model_info_reports_sizes_and_costs(capsys):
    from lmforge.cli import main
    from lmforge.train.cli import model_info

    info = model_info("llama-70b", tokens=1e12)
    assert 68e9 < info["params"] < 71e9  # the size that makes a 70B model "about 140 GB" in 16-bit
    assert info["file_bytes"]["bf16"] == 2 * info["params"]
    assert info["train_flops"] == pytest.approx(info["flops_per_token"] * 1e12)
    assert info["flops_per_token"] >= 6 * info["params_non_embedding"]
    tiny = model_info("tiny")
    assert tiny["train_tokens"] == 20 * tiny["params"]
    assert main(["model", "info", "--preset", "gpt2", "--tokens", "1e10", "--tflops", "100"]) == 0
    out = capsys.readouterr().out
    assert "parameter file" in out and "GPU-hours" in out


@pytest.mark.parametrize("variant", ["llama", "gqa-qknorm-tied"])
def test_chunked_training_loss_matches_the_logits_path(variant):
    """The trainer's loss (summed, chunked, no logits kept) has the value and gradients of the plain one."""
    idx = torch.randint(0, 97, (3, 30))
    targets = torch.randint(0, 97, (3, 30))
    targets[0, :7] = -1
    grads = []
    for kwargs in ({"reduction": "sum"}, {"reduction": "sum", "return_logits": False}):
        model = make(variant, seed=1).train()
        logits, loss = model(idx, targets, **kwargs)
        assert (logits is None) == ("return_logits" in kwargs)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l1, g1), (l2, g2) = grads
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-4)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-4, atol=1e-6)
    model = make(variant)
    torch.testing.assert_close(model(idx, targets, return_logits=False)[1], model(idx, targets)[1])


def test_training_rmsnorm_matches_torch_in_value_and_gradients():
    """The hand-written CPU training RMSNorm gives F.rms_norm's output and gradients (x and the gain)."""
    from lmforge.model import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(16, 1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(3, 5, 16) * 3).requires_grad_()
    g = torch.randn(3, 5, 16)
    out = norm(x)
    out.backward(g)
    ours = (out.detach(), x.grad.clone(), norm.weight.grad.clone())
    x.grad, norm.weight.grad = None, None
    ref = torch.nn.functional.rms_norm(x, (16,), norm.weight, 1e-5)
    ref.backward(g)
    for a, b in zip(ours, (ref.detach(), x.grad, norm.weight.grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
