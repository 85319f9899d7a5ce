"""The parameter file: exact round trip, quantization bounds, header contents, refusals, `lmforge inspect`."""

from __future__ import annotations

import struct

import pytest
import torch

from lmforge.checkpoint import save_model
from lmforge.cli import main
from lmforge.export import params
from lmforge.inference import paramfile
from lmforge.export.params import export_params, read_header
from lmforge.inference.paramfile import load_params
from lmforge.utils import LmforgeError
from params_helpers import tiny_model, tokenizer


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok.vocab_size)


def test_fp32_round_trip_is_exact_and_header_holds_config_and_tokenizer(tmp_path, tok, model):
    path = tmp_path / "m.bin"
    size = export_params(model, tok, path, "fp32")
    assert size == path.stat().st_size and size % 64 == 0
    back = load_params(path)
    assert back.config.to_dict() == {**model.config.to_dict(), "init_std": back.config.init_std}  # init_std: training only
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.tensor([[tok.bos_id] + tok.encode("def forward(self, x):")])
    with torch.no_grad():
        assert torch.equal(model(ids)[0], back(ids)[0])
    h = read_header(path)
    assert h.token_bytes == [tok.token_bytes(i) for i in range(len(h.token_bytes))]
    assert h.special_tokens == tok.special_tokens and h.pattern == tok.pattern
    assert all(t.offset % 64 == 0 for t in h.tensors)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_reduced_dtypes_round_trip_within_their_precision(tmp_path, tok, model, dtype):
    path = tmp_path / f"m_{dtype}.bin"
    export_params(model, tok, path, dtype)
    back = load_params(path).state_dict()
    for name, w in model.state_dict().items():
        got = back[name]
        if w.dim() == 1:
            assert torch.equal(got, w), f"{name}: norm weights stay fp32"
        elif dtype == "fp16":
            assert torch.equal(got, w.half().float()), name
        elif dtype == "bf16":
            assert torch.equal(got, w.bfloat16().float()), name
        else:  # symmetric int8: error at most half a step, step = max|w| / 127 over each group of 64
            groups = w.reshape(-1, 64)
            step = groups.abs().amax(dim=1, keepdim=True) / 127
            assert ((got.reshape(-1, 64) - groups).abs() <= step / 2 + 1e-7).all(), name
    n_matrix = sum(w.numel() for w in model.state_dict().values() if w.dim() == 2) - (
        model.lm_head.weight.numel() if model.config.tie_embeddings else 0)
    per_value = {"fp16": 2, "bf16": 2, "int8": 1 + 4 / 64}[dtype]
    assert path.stat().st_size < n_matrix * per_value * 1.1 + 20_000  # matrices dominate; header and vectors are small


def test_int8_group_size_halves_until_it_divides_rows(tmp_path, tok):
    model = tiny_model(tok.vocab_size, n_embd=96, n_head=4, intermediate_size=160)  # 96 = 3 x 32, 160 = 5 x 32
    export_params(model, tok, tmp_path / "q.bin", "int8", group_size=64)
    assert read_header(tmp_path / "q.bin").group_size == 32


def test_truncated_wrong_magic_and_wrong_version_are_refused_with_the_file_name(tmp_path, tok, model):
    path = tmp_path / "m.bin"
    export_params(model, tok, path, "fp16")
    data = path.read_bytes()
    cases = {
        "cut.bin": (data[:-100], "truncated"),
        "tiny.bin": (data[:60], "truncated"),
        "magic.bin": (b"GGUF" + data[4:], "magic"),
        "version.bin": (data[:4] + struct.pack("<I", 2) + data[8:], "version 2"),
    }
    for name, (blob, reason) in cases.items():
        bad = tmp_path / name
        bad.write_bytes(blob)
        for reader in (read_header, load_params):
            with pytest.raises(LmforgeError, match=reason) as e:
                reader(bad)
            assert str(bad) in str(e.value)


@pytest.mark.parametrize("overrides", [{"norm": "layernorm"}, {"pos": "learned"}, {"mlp": "gelu"}, {"mlp": "relu2"}])
def test_exporter_refuses_what_the_runner_does_not_run(tmp_path, tok, overrides):
    model = tiny_model(tok.vocab_size, **overrides)
    with pytest.raises(LmforgeError, match="Llama family"):
        export_params(model, tok, tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()


def test_cli_exports_a_checkpoint_and_inspect_reads_only_the_header(tmp_path, tok, model, capsys, monkeypatch):
    tok_dir = tok.save(tmp_path / "tok")
    ckpt = save_model(tmp_path / "run" / "ckpt" / "step_0000010", model, tok_dir)
    out = tmp_path / "model.bin"
    assert main(["export", "params", "--checkpoint", str(ckpt.parent.parent), "--dtype", "int8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out.stat().st_size} bytes" in printed and "int8" in printed
    assert out.stat().st_mode & 0o777 == 0o644

    def no_weights(*a, **k):
        raise AssertionError("inspect must not read weights")

    monkeypatch.setattr(paramfile, "_decode_tensor", no_weights)  # the reader lives in inference/paramfile.py
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for expected in ("LMFG version 1", "int8 (group size 64", "2 layers, dim 64, 4 heads (2 K/V)", "QK-norm yes",
                     "<|bos|>=", "layers.1.mlp.w_down.weight", "64x192"):
        assert expected in text, expected
    bad = tmp_path / "bad.bin"
    bad.write_bytes(out.read_bytes()[:1000])
    assert main(["inspect", str(bad)]) == 2
    assert "truncated" in capsys.readouterr().err


def test_an_sft_checkpoint_exports_as_a_chat_model_and_inspect_says_so(tmp_path, tok, model, capsys):
    from lmforge.checkpoint import save_train_checkpoint

    tok_dir = tok.save(tmp_path / "tok")
    # what the trainer records of its data: SFT's conversation batches, or pretraining's token batches
    sft_data = {"epoch": 0, "index": 8, "seed": 1, "n": 40}
    pretrain_data = {"batches": 10, "seed": 1, "world_size": 1, "batch_size": 4, "seq_len": 32, "align": False}
    for kind, data in (("sft", sft_data), ("pretrain", pretrain_data)):
        ckpt = save_train_checkpoint(tmp_path / kind, 10, model, {}, {"data": [data]}, tokenizer_dir=tok_dir)
        assert main(["export", "params", "--checkpoint", str(ckpt), "--out", str(tmp_path / f"{kind}.bin")]) == 0
        assert ("chat model" if kind == "sft" else "base model") in capsys.readouterr().out
        assert params.read_header(tmp_path / f"{kind}.bin").chat == (kind == "sft")
    assert main(["inspect", str(tmp_path / "sft.bin")]) == 0
    assert "fine-tuned for chat (SFT)" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "pretrain.bin")]) == 0
    assert "no: a base model" in capsys.readouterr().out
    forced = tmp_path / "forced.bin"  # --chat records it whatever the checkpoint says
    assert main(["export", "params", "--checkpoint", str(tmp_path / "pretrain"), "--chat", "--out", str(forced)]) == 0
    assert params.read_header(forced).chat
