"""The reversal curse probe: a tiny model fine-tuned on forward statements answers forwards, not in reverse."""

import pytest

from lmforge.evaluation.reversal import CHOICES, ReversalConfig, make_facts, probe_items, run_reversal, statement
from lmforge.model import GPTConfig
from lmforge.utils import LmforgeError


def test_facts_and_items_are_deterministic_and_well_formed():
    facts = make_facts(12, seed=1)
    assert facts == make_facts(12, seed=1) != make_facts(12, seed=2)
    names = [n for pair in facts for n in pair]
    assert len(set(names)) == 24
    items = probe_items(facts, seed=1)
    for (student, teacher), fwd, rev in zip(facts, items[0::2], items[1::2]):
        assert fwd.choices[fwd.answer] == " " + teacher and rev.choices[rev.answer] == " " + student
        assert len(set(fwd.choices)) == len(set(rev.choices)) == CHOICES
        assert statement(student, teacher).startswith(fwd.context)


@pytest.mark.timeout(120)
def test_forward_is_learned_and_reverse_is_not(tmp_path):
    from lmforge.tokenizer import Tokenizer

    cfg = ReversalConfig(facts=16, steps=60, seed=0)
    facts = make_facts(cfg.facts, cfg.seed)
    texts = [statement(s, t) for s, t in facts] + [f"{t} is the teacher of {s}" for s, t in facts]
    Tokenizer.train(texts * 5, vocab_size=320).save(tmp_path / "tok")
    mcfg = GPTConfig(vocab_size=320, n_layer=2, n_head=2, n_embd=64, block_size=32)
    report = run_reversal(None, tmp_path / "run", cfg, model_config=mcfg, tokenizer_dir=tmp_path / "tok")
    assert report["after"]["forward"] >= 0.9, report
    assert report["after"]["reverse"] <= 0.5, report
    assert (tmp_path / "run" / "reversal.json").is_file()


def test_too_few_facts_are_refused():
    with pytest.raises(LmforgeError, match="--facts"):
        ReversalConfig(facts=3)


def test_cli_probes_a_checkpoint(tmp_path):
    import torch
    from hostile import assert_refused, run_cli

    from lmforge.checkpoint import save_model
    from lmforge.model import GPT
    from lmforge.tokenizer import Tokenizer

    Tokenizer.train(["some text with names and teachers"] * 10, vocab_size=280).save(tmp_path / "tok")
    torch.manual_seed(0)
    save_model(tmp_path / "ckpt", GPT(GPTConfig(vocab_size=280, n_layer=1, n_head=2, n_embd=32, block_size=48)),
               tmp_path / "tok")
    out = run_cli(["eval", "reversal", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "r"),
                   "--facts", "4", "--steps", "2"])
    assert out.code == 0, out.stderr
    assert "reverse" in out.stdout and (tmp_path / "r" / "reversal.json").is_file()
    assert_refused(run_cli(["eval", "reversal", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "x"),
                            "--steps", "0"]), "--steps")
