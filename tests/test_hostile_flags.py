"""Hostile inputs, class "flags" of issue 13: absurd values and damaged files read from disk are refused with exit
code 2 and one line naming the flag or file, never a traceback, and nothing is written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hostile import assert_refused, run_cli, tree_digest
from test_train import real_shards  # noqa: F401 - the fixture: shards from the real tokenizer
import subprocess
from lmforge.checkpoint import save_model
from lmforge.export.params import export_params
from params_helpers import compile_runner, tiny_model, tokenizer


@pytest.fixture(scope="module")
def data_inputs(tmp_path_factory) -> dict[str, Path]:
    """A small document file, a tiny tokenizer, a file where a folder belongs, and a crawl with a damaged state."""
    from lmforge.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("flags_data")
    docs = root / "docs.jsonl.gz"
    with gzip.open(docs, "wt") as f:
        f.writelines(json.dumps({"id": f"d{i}", "text": f"document number {i} with a few words"}) + "\n"
                     for i in range(5))
    Tokenizer.train([f"document number {i} with a few words" for i in range(50)], vocab_size=280).save(root / "tok")
    (root / "a_file").write_text("not a folder\n")
    (root / "page.html").write_text("<html><body><p>a web page</p></body></html>\n")
    for name, text in (("crawl_list", "[1, 2, 3]\n"), ("crawl_types", json.dumps(
            {"seeds": ["http://127.0.0.1:9/"], "allowed_hosts": ["127.0.0.1:9"], "frontier": [["x", "deep", 0]]})),
            ("crawl_json", "{not json"), ("crawl_port", json.dumps({"seeds": ["http://127.0.0.1:99999/"],
                                                                   "allowed_hosts": ["127.0.0.1:99999"]}))):
        (root / name).mkdir()
        (root / name / "crawl_state.json").write_text(text)
    (root / "chain_pii.json").write_text(json.dumps({"steps": [{"step": "pii"}]}))  # no URL filter in it
    (root / "run_list").mkdir()
    (root / "run_list" / "run.json").write_text("[]\n")
    for name, text in (("report_list", "[]\n"), ("report_steps", json.dumps(
            {k: 1 for k in ("config", "inputs", "tasks", "engine", "workers", "seconds", "kept", "problems", "steps",
                            "relaxed_rules", "dedup", "languages", "lengths", "tokens")}))):
        (root / name).mkdir()
        (root / name / "report.json").write_text(text)
    return {"root": root, "docs": docs, "tok": root / "tok", "file": root / "a_file"}


CRAWL = ["crawl", "http://127.0.0.1:9/", "--quiet"]
FLAG_ROWS = [  # (argv after the verb with {root}/{docs}/{tok}/{file} filled in, culprit named on stderr)
    (["tokenize", "--input", "{docs}", "--tokenizer", "{tok}", "--out", "{root}/t", "--val-fraction", "2"],
     "--val-fraction"),
    (["tokenize", "--input", "{docs}", "--tokenizer", "{tok}", "--out", "{root}/t", "--val-fraction", "nan"],
     "--val-fraction"),
    (["tokenize", "--input", "{docs}", "--tokenizer", "{tok}", "--out", "{root}/t", "--min-val-tokens", "-1"],
     "--min-val-tokens"),
    (["tokenize", "--input", "{docs}", "--tokenizer", "{tok}", "--out", "{root}/t", "--workers", "0"],
     "--workers"),
    (["tokenize", "--input", "{docs}", "--tokenizer", "{tok}", "--out", "{file}"], "--out"),
    (["tokenize", "--input", "{root}/page.html", "--tokenizer", "{tok}", "--out", "{root}/t"], "page.html"),
    (["tokenize", "--input", "{docs}", "--tokenizer", "{tok}", "--out", "{root}/t", "--text-max-chars", "-5"],
     "--text-max-chars"),
    (["tokenize", "--input", "{docs}", "--tokenizer", "{root}/no_tokenizer", "--out", "{root}/t"], "--tokenizer"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--text-max-chars", "-1"], "--text-max-chars"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--workers", "0"], "--workers"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--workers", "-3"], "--workers"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--min-tasks", "0"], "--min-tasks"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--min-tasks", "1000000000"], "--min-tasks"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--workers", "1000000"], "--workers"),
    (["data", "run", "--input", "{docs}", "--out", "{file}"], "--out"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/run_list", "--config", "pydoc"], "run.json"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--blocklist", "{root}/no_lists"], "--blocklist"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--blocklist", "{root}/run_list"], "run_list"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--blocklist", "{file}", "--config",
      "{root}/chain_pii.json"], "--blocklist"),
    (["data", "step", "pii", "--input", "{docs}", "--out", "{root}/s", "--workers", "0"], "--workers"),
    (["data", "dedup", "--input", "{docs}", "--out", "{root}/d", "--workers", "-1"], "--workers"),
    (["data", "report", "{root}/report_list"], "report.json"),
    (["data", "report", "{root}/report_steps"], "report.json"),
    (["data", "report", "{root}/no_such_run"], "report.json"),
    (CRAWL + ["--out", "{root}/c", "--timeout", "-1"], "--timeout"),
    (CRAWL + ["--out", "{root}/c", "--timeout", "nan"], "--timeout"),
    (CRAWL + ["--out", "{root}/c", "--max-page-mb", "-1"], "--max-page-mb"),
    (CRAWL + ["--out", "{root}/c", "--max-page-mb", "inf"], "--max-page-mb"),
    (CRAWL + ["--out", "{root}/c", "--max-pages", "0"], "--max-pages"),
    (CRAWL + ["--out", "{root}/c", "--workers", "0"], "--workers"),
    (CRAWL + ["--out", "{root}/c", "--workers", "100000"], "--workers"),
    (CRAWL + ["--out", "{root}/c", "--delay", "-1"], "--delay"),
    (CRAWL + ["--out", "{root}/c", "--max-redirects", "-1"], "--max-redirects"),
    (CRAWL + ["--out", "{root}/c", "--max-depth", "-1"], "--max-depth"),
    (CRAWL + ["--out", "{root}/c", "--warc-max-mb", "0"], "--warc-max-mb"),
    (CRAWL + ["--out", "{root}/c", "--checkpoint-pages", "0"], "--checkpoint-pages"),
    (CRAWL + ["--out", "{root}/c", "--checkpoint-seconds", "-5"], "--checkpoint-seconds"),
    (CRAWL + ["--out", "{file}"], "--out"),
    (CRAWL + ["--out", "{root}/crawl_list"], "crawl_state.json"),
    (CRAWL + ["--out", "{root}/crawl_types"], "crawl_state.json"),
    (CRAWL + ["--out", "{root}/crawl_json"], "crawl_state.json"),
    (["crawl", "--pydoc", "--quiet", "--out", "{root}/crawl_list"], "crawl_state.json"),
    (["crawl", "--pydoc", "--quiet", "--out", "{root}/crawl_port"], "crawl_state.json"),
]


@pytest.mark.parametrize("argv,culprit", FLAG_ROWS, ids=[f"{' '.join(a[:2])} {c}" for a, c in FLAG_ROWS])
def test_flags_data_and_crawl(data_inputs, argv, culprit):
    argv = [a.format(**data_inputs) for a in argv]
    before = tree_digest(data_inputs["root"])
    outcome = run_cli(argv)
    assert_refused(outcome, culprit)
    assert tree_digest(data_inputs["root"]) == before  # a refused run writes nothing

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny real checkpoint (byte tokenizer, one layer), so a refusal can only come from the flag under test."""
    import torch

    from lmforge.checkpoint import save_model
    from lmforge.model import GPT, GPTConfig
    from lmforge.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("ckpt")
    tok = Tokenizer([])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64))
    return save_model(root / "ckpt", model, tok.save(root / "tok"))


# (verb and flags after --checkpoint, the flag the error must name)
INFERENCE_FLAGS = [
    (["generate", "--prompt", "hi", "--device", "tpu"], "--device"),
    (["generate", "--prompt", "hi", "--device", "cuda:x"], "--device"),
    (["generate", "--prompt", "hi", "--device", "cuda:99"], "--device"),
    (["generate", "--prompt", "hi", "--temperature", "-1"], "--temperature"),
    (["generate", "--prompt", "hi", "--top-p", "2"], "--top-p"),
    (["generate", "--prompt", "hi", "--top-k", "-1"], "--top-k"),
    (["generate", "--prompt", "hi", "--min-p", "1.5"], "--min-p"),
    (["generate", "--prompt", "hi", "--repetition-penalty", "0"], "--repetition-penalty"),
    (["generate", "--prompt", "hi", "--max-tokens", "0"], "--max-tokens"),
    (["generate", "--prompt", "hi", "--n", "0"], "--n"),
    (["generate", "--prompt", "hi", "--show-probs", "-1"], "--show-probs"),
    (["chat", "--device", "tpu"], "--device"),
    (["chat", "--temperature", "-1"], "--temperature"),
    (["chat", "--top-p", "2"], "--top-p"),
    (["chat", "--top-k", "-1"], "--top-k"),
    (["chat", "--max-tokens", "0"], "--max-tokens"),
    (["eval", "sft", "--device", "tpu"], "--device"),
    (["eval", "sft", "--prompts", "-1"], "--prompts"),
    (["eval", "sft", "--arithmetic", "-5"], "--arithmetic"),
    (["eval", "sft", "--samples", "-1"], "--samples"),
    (["eval", "sft", "--max-tokens", "0"], "--max-tokens"),
]

# Values only SamplingParams's own bounds can refuse (non-finite numbers, a seed beyond 64 bits, sizes that would
# allocate without limit): the sampling module checks them, these rows check that each verb lets that error through
# as one line naming the flag. They name a checkpoint that does not exist: the verbs check flags before loading, so
# a flag let through fails on the checkpoint (and the row fails, naming no flag) instead of sampling a million rows.
INFERENCE_SAMPLING_BOUNDS = [
    (["generate", "--prompt", "hi", "--temperature", "inf"], "--temperature"),
    (["generate", "--prompt", "hi", "--temperature", "nan"], "--temperature"),
    (["generate", "--prompt", "hi", "--top-p", "nan"], "--top-p"),
    (["generate", "--prompt", "hi", "--frequency-penalty", "nan"], "--frequency-penalty"),
    (["generate", "--prompt", "hi", "--presence-penalty", "inf"], "--presence-penalty"),
    (["generate", "--prompt", "hi", "--seed", str(2**64)], "--seed"),
    (["generate", "--prompt", "hi", "--n", "1000000"], "--n"),
    (["generate", "--prompt", "hi", "--max-tokens", str(10**12)], "--max-tokens"),
    (["chat", "--temperature", "inf"], "--temperature"),
    (["chat", "--seed", str(2**64)], "--seed"),
    (["eval", "sft", "--seed", str(2**64)], "--seed"),
]


def _refused_without_output(argv: list[str], culprit: str, checkpoint: Path, tmp_path: Path) -> None:
    """`argv` with `--checkpoint` after the verb is refused naming `culprit`, and writes nothing."""
    verb = argv[:2] if argv[0] == "eval" else argv[:1]
    report = tmp_path / "eval.json"
    extra = ["--json", str(report)] if argv[0] == "eval" else []
    before = tree_digest(checkpoint)
    outcome = run_cli([*verb, "--checkpoint", str(checkpoint), *argv[len(verb):], *extra, "--threads", "1"])
    assert_refused(outcome, culprit)
    assert tree_digest(checkpoint) == before and not report.exists()


@pytest.mark.parametrize("argv,culprit", INFERENCE_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_flags_inference(argv, culprit, checkpoint, tmp_path):
    _refused_without_output(argv, culprit, checkpoint, tmp_path)


@pytest.mark.parametrize("argv,culprit", INFERENCE_SAMPLING_BOUNDS,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_flags_inference_sampling_bounds(argv, culprit, tmp_path):
    _refused_without_output(argv, culprit, tmp_path / "no_checkpoint", tmp_path)


def test_flags_inference_values_a_user_may_give_still_run(checkpoint, capsys):
    """The checks refuse only what is wrong: greedy, `--device auto` and the edges of each range still generate."""
    outcome = run_cli(["generate", "--checkpoint", str(checkpoint), "--prompt", "hi", "--max-tokens", "3",
                       "--temperature", "0", "--top-p", "1", "--min-p", "1", "--device", "auto", "--threads", "1",
                       "--show-probs", "0"])
    assert outcome.code == 0 and outcome.stdout.startswith("hi"), outcome.stderr


# Damaged DONE.json markers: (file content, where it sits). The run reads a marker to skip its stage or, under
# --only, to hand its summary to later stages; either way a damaged one is refused, named, before any stage runs.
DAMAGED_MARKERS = [
    "{not json",
    "",
    "[1, 2]",
    '{"seconds": "soon"}',
    "\xff\xfe",
]


@pytest.mark.parametrize("content", DAMAGED_MARKERS)
@pytest.mark.parametrize("only", [[], ["--only", "data"]], ids=["resume", "only"])
def test_flags_speedrun_damaged_marker(content, only, tmp_path):
    out = tmp_path / "run"
    marker = out / "01_crawl" / "DONE.json"
    marker.parent.mkdir(parents=True)
    marker.write_bytes(content.encode("latin-1"))
    before = tree_digest(out)
    outcome = run_cli(["speedrun", "--out", str(out), "--threads", "1", *only])
    assert_refused(outcome, str(marker))
    assert tree_digest(out) == before and sorted(p.name for p in out.iterdir()) == ["01_crawl"]


def test_flags_speedrun_damaged_marker_of_a_later_stage(tmp_path):
    """An intact first marker, a damaged second one: `--only tokenizer` stops at the damaged one, and the
    tokenizer stage never starts."""
    out = tmp_path / "run"
    (out / "01_crawl").mkdir(parents=True)
    (out / "01_crawl" / "DONE.json").write_text(json.dumps({"warc_dir": str(tmp_path), "seconds": 1.0}))
    (out / "02_data").mkdir()
    (out / "02_data" / "DONE.json").write_text('{"documents": [')
    outcome = run_cli(["speedrun", "--out", str(out), "--only", "tokenizer"])
    assert_refused(outcome, str(out / "02_data" / "DONE.json"))
    assert not (out / "03_tokenizer").exists()


SPEEDRUN_STAGE_FLAGS = [
    (["--preset", "huge"], "--preset"),
    (["--from", "nowhere"], "--from"),
    (["--until", "nowhere"], "--until"),
    (["--from", "sft", "--until", "data"], "--until"),
    (["--only", "nowhere"], "--only"),
]


@pytest.mark.parametrize("plan", [[], ["--plan"]], ids=["run", "plan"])
@pytest.mark.parametrize("argv,culprit", SPEEDRUN_STAGE_FLAGS)
def test_flags_speedrun_stage_selection(argv, culprit, plan, tmp_path):
    """A preset or stage name that does not exist, or a --from after --until, is refused before anything runs."""
    outcome = run_cli(["speedrun", "--out", str(tmp_path / "run"), *argv, *plan])
    assert_refused(outcome, culprit)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_flags_speedrun_threads(threads, tmp_path):
    outcome = run_cli(["speedrun", "--out", str(tmp_path / "run"), "--threads", threads])
    assert_refused(outcome, "--threads")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("plan", [[], ["--plan"]], ids=["run", "plan"])
@pytest.mark.parametrize("make", ["missing", "unknown_format"])
def test_flags_speedrun_input(tmp_path, make, plan):
    """A missing --input, or a folder holding no file the data pipeline reads, is one line naming --input; nothing
    is written."""
    target = tmp_path / "absent.txt"
    if make == "unknown_format":
        target = tmp_path / "pictures"
        target.mkdir()
        (target / "cat.png").write_bytes(b"\x89PNG")
    outcome = run_cli(["speedrun", "--preset", "smoke", "--input", str(target), "--out", str(tmp_path / "run"), *plan])
    assert_refused(outcome, "--input")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,value", [("--k", "1"), ("--judge-noise", "2"), ("--judge", "oracle"),
                                        ("--temperature", "-1"), ("--prompts", "0"), ("--threads", "0")])
def test_flags_speedrun_eval_winrate(tmp_path, flag, value):
    outcome = run_cli(["eval", "winrate", "--policy", str(tmp_path), "--baseline", str(tmp_path),
                       "--out", str(tmp_path / "out"), flag, value])
    assert_refused(outcome, flag)
    assert not (tmp_path / "out").exists()



TINY_MODEL = ["--model", "n_layer=1", "--model", "n_embd=32", "--model", "n_head=2", "--model", "block_size=32"]

TRAIN_ROWS = [
    (["--keep-checkpoints", "-1"], "--keep-checkpoints"),
    (["--device", "tpu"], "--device"),
    (["--model", "n_embd=-128"], "n_embd"),
    (["--model", "n_head=0"], "n_head"),
    (["--model", "block_size=1000000000"], "block_size"),
    (["--model", "vocab_size=1e9"], "vocab_size"),
    (["--model", "rope_theta=nan"], "rope_theta"),
    (["--model", "nosuchfield=1"], "nosuchfield"),
    (["--model", "n_layer"], "--model"),
    (["--preset", "nosuch"], "--preset"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--embed-lr", "0"], "--embed-lr"),
    (["--muon-lr", "-0.1"], "--muon-lr"),
    (["--max-steps", "-5"], "--max-steps"),
    (["--max-steps", "1e3"], "--max-steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--grad-accum", "0"], "--grad-accum"),
    (["--seq-len", "0"], "--seq-len"),
    (["--seq-len", "64"], "--seq-len"),  # longer than the model's block_size of 32
    (["--warmup-steps", "-1"], "--warmup-steps"),
    (["--time-budget", "nan"], "--time-budget"),
    (["--decay-start-frac", "2"], "--decay-start-frac"),
    (["--min-lr-frac", "-0.5"], "--min-lr-frac"),
    (["--beta1", "1"], "--beta1"),
    (["--grad-clip", "-1"], "--grad-clip"),
    (["--eval-every", "-1"], "--eval-every"),
    (["--log-every", "0"], "--log-every"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "99999999999999999999999"], "--seed"),
    (["--peak-flops", "-1"], "--peak-flops"),
    (["--fsdp"], "--fsdp"),  # FSDP2 shards over processes: one process is refused
    (["--dtype", "float8"], "--dtype"),
    (["--threads", "0"], "--threads"),
    (["--init-from", "/nonexistent/run"], "/nonexistent/run"),
]


@pytest.mark.parametrize("extra, culprit", TRAIN_ROWS, ids=[" ".join(r[0]) for r in TRAIN_ROWS])
def test_flags_train_pretrain(real_shards, tmp_path, extra, culprit):  # noqa: F811
    out = tmp_path / "run"
    before = tree_digest(real_shards)
    outcome = run_cli(["pretrain", "--data", real_shards, "--out", out, *TINY_MODEL, "--max-steps", "2",
                       "--no-progress", "--no-tensorboard", *extra])
    assert_refused(outcome, culprit)
    assert not out.exists() and tree_digest(real_shards) == before


SFT_ROWS = [
    (["--val-frac", "2"], "--val-frac"),
    (["--conversations", "0"], "--conversations"),
    (["--pad-multiple", "0"], "--pad-multiple"),
    (["--max-val", "-1"], "--max-val"),
    (["--lr", "-1"], "--lr"),
    (["--muon-lr", "nan"], "--muon-lr"),
    (["--keep-checkpoints", "-1"], "--keep-checkpoints"),
    (["--batch-size", "0"], "--batch-size"),
    (["--max-steps", "nan"], "--max-steps"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:x"], "--device"),
    (["--threads", "-2"], "--threads"),
]


@pytest.mark.parametrize("extra, culprit", SFT_ROWS, ids=[" ".join(r[0]) for r in SFT_ROWS])
def test_flags_sft(tmp_path, extra, culprit):
    out = tmp_path / "sft"
    assert_refused(run_cli(["sft", "--checkpoint", tmp_path / "base", "--out", out, *extra]), culprit)
    assert not out.exists()


def test_flags_sft_needs_checkpoint_and_out(tmp_path):
    assert_refused(run_cli(["sft", "--out", tmp_path / "sft"]), "--checkpoint")


@pytest.mark.parametrize("content, extra, culprit", [
    (None, [], "--refusal-prompts"), ("text\nno goal column\n", [], "--refusal-prompts"),
    ("goal\nsome harmful request\n", ["--lookalike-weight", "-1"], "--lookalike-weight"),
], ids=["missing", "no-column", "negative-weight"])
def test_flags_sft_data_refusal_prompts(tmp_path, content, extra, culprit):
    """`sft data --refusal-prompts`: a missing file, one without a request column or a negative look-alike weight
    is refused, nothing written."""
    path = tmp_path / "requests.csv"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "sft.jsonl"
    assert_refused(run_cli(["sft", "data", "--refusal-prompts", path, "--out", out, *extra]), culprit)
    assert not out.exists()


PREFERENCE_ROWS = [
    (["reward", "train"], ["--center-coef", "-1"], "--center-coef"),
    (["reward", "train"], ["--val-frac", "1"], "--val-frac"),
    (["reward", "train"], ["--val-last", "-3"], "--val-last"),
    (["reward", "train"], ["--fsdp", "--optimizer", "adamw"], "--fsdp"),
    (["reward", "train"], ["--threads", "0"], "--threads"),
    (["dpo"], ["--beta", "0"], "--beta"),
    (["dpo"], ["--beta", "nan"], "--beta"),
    (["dpo"], ["--ref-batch-size", "0"], "--ref-batch-size"),
    (["dpo"], ["--lr", "-1"], "--lr"),
]


@pytest.mark.parametrize("verb, extra, culprit", PREFERENCE_ROWS,
                         ids=[" ".join(r[0] + r[1]) for r in PREFERENCE_ROWS])
def test_flags_preference_training(tmp_path, verb, extra, culprit):
    out = tmp_path / "run"
    argv = [*verb, "--checkpoint", tmp_path / "base", "--data", tmp_path / "pairs.jsonl", "--out", out, *extra]
    assert_refused(run_cli(argv), culprit)
    assert not out.exists()


def test_flags_preference_reward_score(tmp_path):
    assert_refused(run_cli(["reward", "score", "--checkpoint", tmp_path / "rm", "--pairs", tmp_path / "p.jsonl",
                            "--batch-size", "0"]), "--batch-size")
    assert_refused(run_cli(["reward", "score", "--checkpoint", tmp_path / "rm", "--pairs", tmp_path / "p.jsonl"]),
                   str(tmp_path / "rm"))


MODEL_INFO_ROWS = [
    (["--gpus", "0"], "--gpus"),
    (["--gpus", "-3"], "--gpus"),
    (["--mfu", "0"], "--mfu"),
    (["--mfu", "1.5"], "--mfu"),
    (["--tflops", "-1"], "--tflops"),
    (["--tflops", "inf"], "--tflops"),
    (["--tokens", "nan"], "--tokens"),
    (["--tokens", "-1e9"], "--tokens"),
    (["--usd-per-gpu-hour", "-1"], "--usd-per-gpu-hour"),
    (["--preset", "nosuch"], "--preset"),
]


@pytest.mark.parametrize("extra, culprit", MODEL_INFO_ROWS, ids=[" ".join(r[0]) for r in MODEL_INFO_ROWS])
def test_flags_model_info(extra, culprit):
    assert_refused(run_cli(["model", "info", *extra]), culprit)




def test_flags_tokenizer(tmp_path: Path):
    """`tokenizer train|show|encode|decode|export-hf`: every flag checked before anything is read or written."""
    from lmforge.tokenizer import Tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world, the tokenizer reads this text " * 20)
    (tmp_path / "empty.txt").write_text("")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "a document"}\n' * 3)
    (tmp_path / "empty_dir").mkdir()
    out = tmp_path / "out"
    Tokenizer.train([corpus.read_text()], 300).save(out)  # an existing tokenizer the refused runs must not touch
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    before = tree_digest(tmp_path)

    def train(**flags: str) -> list[str]:
        argv = {"--input": str(corpus), "--vocab-size": "300", "--out": str(out), **flags}
        return ["tokenizer", "train", *[x for k, v in argv.items() for x in (k, v)]]

    rows = [
        (train(**{"--vocab-size": "100"}), "--vocab-size"),
        (train(**{"--vocab-size": "-1"}), "--vocab-size"),
        (train(**{"--vocab-size": str(10**12)}), "--vocab-size"),
        (train(**{"--vocab-size": "4k"}), "--vocab-size"),
        (train(**{"--input": str(tmp_path / "missing.txt")}), "missing.txt"),
        (train(**{"--input": str(tmp_path / "empty.txt")}), "--input"),
        (train(**{"--input": str(tmp_path / "empty_dir")}), "--input"),
        (train(**{"--pattern": "(unclosed"}), "--pattern"),
        (train(**{"--pattern": ""}), "--pattern"),
        (train(**{"--workers": "0"}), "--workers"),
        (train(**{"--workers": "100000"}), "--workers"),
        (train(**{"--text-field": ""}), "--text-field"),
        (train(**{"--input": str(jsonl), "--text-field": "body"}), "--text-field"),  # no line has it: no text
        (train(**{"--out": str(a_file)}), "--out"),
        (["tokenizer", "show", "--tokenizer", str(tmp_path / "nowhere"), "x"], "nowhere"),
        (["tokenizer", "show", "--tokenizer", str(out), "--file", str(tmp_path / "missing.txt")], "missing.txt"),
        (["tokenizer", "encode", "--tokenizer", str(out), "--file", str(tmp_path / "empty_dir")], "empty_dir"),
        (["tokenizer", "decode", "--tokenizer", str(out), "1", "99999999"], "99999999"),
        (["tokenizer", "decode", "--tokenizer", str(out), "-3"], "-3"),
        (["tokenizer", "decode", "--tokenizer", str(out), "abc"], "abc"),
        (["tokenizer", "export-hf", "--tokenizer", str(out), "--out", str(tmp_path / "empty_dir")], "--out"),
    ]
    for argv, culprit in rows:
        assert_refused(run_cli(argv), culprit)
    assert tree_digest(tmp_path) == before



# (arguments after the parameter file, the flag the one-line refusal must name)
RUNNER_FLAGS = [
    (["-t", "nan"], "-t"), (["-t", "inf"], "-t"), (["-t", "-1"], "-t"), (["-t", "1e9"], "-t"), (["-t", "warm"], "-t"),
    (["-p", "2"], "-p"), (["-p", "nan"], "-p"), (["-p", "0"], "-p"), (["-p", "-0.5"], "-p"),
    (["-n", "-5"], "-n"), (["-n", "0"], "-n"), (["-n", "99999999999"], "-n"), (["-n", "2.5"], "-n"), (["-n", ""], "-n"),
    (["-s", "-1"], "-s"), (["-s", "18446744073709551616"], "-s"), (["-s", "12x"], "-s"),
    (["-m", "nope"], "-m"), (["-k", "5"], "-k"), (["-k", "-3"], "-k"), (["-x"], "-x"), (["--top-p", "0.5"], "--top-p"),
    (["-n"], "-n"), (["-t"], "-t"), (["-i", "hi", "-d", "/nonexistent/folder/logits.bin"], "-d"),
    (["-i", "hi", "stray"], "stray"),
]


@pytest.fixture(scope="module", params=[(), ("-march=native", "-ffast-math")], ids=["cc -O3", "fast-math"])
def runner_bin(request, tmp_path_factory) -> Path:
    """The portable build, and `make runner`'s flags (-ffast-math lets the compiler assume no NaN or infinity,
    which must not let a NaN flag through)."""
    return compile_runner(tmp_path_factory.mktemp("runner") / "run", *request.param)


@pytest.fixture(scope="module")
def runner_params_file(tmp_path_factory) -> Path:
    tok = tokenizer()
    path = tmp_path_factory.mktemp("params") / "m.bin"
    export_params(tiny_model(tok.vocab_size), tok, path, "fp32")
    return path


@pytest.mark.parametrize("args,flag", RUNNER_FLAGS, ids=[" ".join(a) or "empty" for a, _ in RUNNER_FLAGS])
def test_flags_runner(runner_bin, runner_params_file, args, flag):
    r = subprocess.run([str(runner_bin), str(runner_params_file), *args], capture_output=True, timeout=30)
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 2 and r.stdout == b"" and len(lines) == 1, (r.returncode, lines)
    assert flag in lines[0], lines[0]


@pytest.fixture(scope="module")
def export_checkpoint(tmp_path_factory) -> Path:
    tok = tokenizer()
    root = tmp_path_factory.mktemp("ckpt")
    return save_model(root / "run" / "ckpt" / "step_0000001", tiny_model(tok.vocab_size), tok.save(root / "tok"))


def export_cases(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "folder").mkdir()
    (tmp / "folder" / "notes.txt").write_text("mine")
    (tmp / "a_file").write_text("mine")
    return [
        (["params", "--dtype", "int4", "--out", tmp / "m.bin"], "--dtype"),
        (["params", "--group-size", "0", "--out", tmp / "m.bin"], "--group-size"),
        (["params", "--group-size", "12", "--dtype", "int8", "--out", tmp / "m.bin"], "--group-size"),
        (["params", "--group-size", "-64", "--out", tmp / "m.bin"], "--group-size"),
        (["params", "--out", tmp / "folder"], "--out"),
        (["params", "--out", tmp / "a_file" / "m.bin"], "--out"),
        (["hf", "--dtype", "float8", "--out", tmp / "hf"], "--dtype"),
        (["hf", "--out", tmp / "a_file"], "--out"),
        (["hf", "--out", tmp / "folder"], "--out"),  # a folder that is no earlier export is never replaced
        (["gguf", "--dtype", "q4", "--out", tmp / "m.gguf"], "--dtype"),
        (["gguf", "--out", tmp / "folder"], "--out"),
    ]


def test_flags_export(tmp_path, export_checkpoint):
    for args, flag in export_cases(tmp_path):
        before = tree_digest(tmp_path)
        outcome = run_cli(["export", args[0], "--checkpoint", export_checkpoint, *args[1:]])
        assert_refused(outcome, flag)
        assert tree_digest(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder"]


# ---------------------------------------------------------------------------------------------------------------
# Preference data: rlhf sample and label (flags are checked before any checkpoint, store or folder is touched)
# ---------------------------------------------------------------------------------------------------------------

RLHF_SAMPLE_ROWS = [
    (["--k", "1"], "--k"), (["--k", "0"], "--k"), (["--top-p", "2"], "top_p"), (["--temperature", "-1"], "temperature"),
    (["--max-tokens", "0"], "--max-tokens"), (["--batch-prompts", "0"], "--batch-prompts"),
    (["--n-prompts", "0"], "--n-prompts"), (["--max-tool-calls", "-1"], "--max-tool-calls"),
    (["--threads", "0"], "--threads"), (["--device", "tpu"], "--device"), (["--k", "many"], "--k"),
]


@pytest.mark.parametrize("extra, culprit", RLHF_SAMPLE_ROWS, ids=[" ".join(r[0]) for r in RLHF_SAMPLE_ROWS])
def test_flags_preferences_rlhf_sample(tmp_path, extra, culprit):
    assert_refused(run_cli(["rlhf", "sample", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "out", *extra]),
                   culprit)
    assert not (tmp_path / "out").exists()


def test_flags_preferences_rlhf_sample_inputs(tmp_path, checkpoint):
    assert_refused(run_cli(["rlhf", "sample", "--checkpoint", tmp_path / "nowhere", "--out", tmp_path / "o"]), "nowhere")
    assert_refused(run_cli(["rlhf", "sample", "--checkpoint", checkpoint, "--out", tmp_path / "o",
                            "--prompts", tmp_path / "none.jsonl"]), "--prompts")
    (tmp_path / "bad.jsonl").write_text('{"prompt": [{"role": "assistant", "content": "hi"}]}\n')
    assert_refused(run_cli(["rlhf", "sample", "--checkpoint", checkpoint, "--out", tmp_path / "o",
                            "--prompts", tmp_path / "bad.jsonl"]), "no usable prompt")
    assert not (tmp_path / "o").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine\n")
    before = tree_digest(tmp_path / "full")
    assert_refused(run_cli(["rlhf", "sample", "--checkpoint", checkpoint, "--out", tmp_path / "full"]),
                   "not a sample folder")
    assert tree_digest(tmp_path / "full") == before


LABEL_ROWS = [
    (["--simulate", "psychic"], "--simulate"), (["--simulate", "default", "--noise", "-1"], "--noise"),
    (["--simulate", "default", "--noise", "nan"], "--noise"), (["--simulate", "default", "--votes", "0"], "--votes"),
    (["--simulate", "default", "--repeat-rate", "1.5"], "--repeat-rate"),
    (["--simulate", "default", "--gold-rate", "-0.1"], "--gold-rate"), (["--simulate", "default", "--limit", "0"], "--limit"),
    (["--port", "70000"], "--port"), (["--port", "0"], "--port"), (["--mode", "elo"], "--mode"),
]


@pytest.mark.parametrize("extra, culprit", LABEL_ROWS, ids=[" ".join(r[0]) for r in LABEL_ROWS])
def test_flags_preferences_label(tmp_path, extra, culprit):
    from preference_helpers import write_sample_folder

    folder = write_sample_folder(tmp_path / "s")
    before = tree_digest(folder)
    assert_refused(run_cli(["label", "--pairs", folder, *extra]), culprit)
    assert tree_digest(folder) == before


def test_flags_preferences_label_inputs(tmp_path):
    from preference_helpers import synthetic_records, write_sample_folder

    folder = write_sample_folder(tmp_path / "s")
    assert_refused(run_cli(["label", "--simulate", "default"]), "--pairs")
    assert_refused(run_cli(["label", "--pairs", tmp_path / "nowhere", "--simulate", "default"]), "samples.jsonl")
    assert_refused(run_cli(["label", "report", "--pairs", folder]), "labels.sqlite")
    assert_refused(run_cli(["label", "export", "--pairs", folder, "--out", tmp_path / "p.jsonl"]), "labels.sqlite")
    assert_refused(run_cli(["label", "--pairs", folder, "--simulate", "default", "--db", folder / "samples.jsonl"]),
                   "samples.jsonl")
    damaged = synthetic_records()
    del damaged[2]["responses"][1]["finish_reason"]
    write_sample_folder(tmp_path / "bad", damaged)
    assert_refused(run_cli(["label", "--pairs", tmp_path / "bad", "--simulate", "default"]), "samples.jsonl:3")
    assert not (tmp_path / "bad" / "labels.sqlite").exists()


def test_flags_preferences_rlhf_sample_prompt_too_long(tmp_path, checkpoint):
    (tmp_path / "long.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"prompt": "x" * 500}) + "\n")
    assert_refused(run_cli(["rlhf", "sample", "--checkpoint", checkpoint, "--out", tmp_path / "o",
                            "--prompts", tmp_path / "long.jsonl"]), "prompt 1 is")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def evaluation_inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint, a multiple-choice file, and a sweep folder whose config is damaged."""
    import torch

    from lmforge.checkpoint import save_model
    from lmforge.model import GPT, GPTConfig
    from lmforge.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("flags_evaluation")
    Tokenizer.train(["a few words of text"] * 20, vocab_size=270).save(root / "tok")
    torch.manual_seed(0)
    save_model(root / "ckpt", GPT(GPTConfig(vocab_size=270, n_layer=1, n_head=2, n_embd=16, block_size=32)),
               root / "tok")
    (root / "mc.jsonl").write_text(json.dumps({"context": "a", "choices": ["b", "c"], "answer": 0}) + "\n")
    (root / "sweep").mkdir()
    (root / "sweep" / "sweep_config.json").write_text(json.dumps({"widths": [32], "flops": [1e11, 1e12]}))
    return {"root": root}


@pytest.mark.parametrize("argv,culprit", [
    (["scaling", "sweep", "--data", "{root}/nowhere", "--out", "{root}/out"], "nowhere"),
    (["scaling", "sweep", "--data", "{root}", "--out", "{root}/out", "--widths", "32"], "--widths"),
    (["scaling", "sweep", "--data", "{root}", "--out", "{root}/out", "--widths", "30,64"], "--head-dim"),
    (["scaling", "sweep", "--data", "{root}", "--out", "{root}/out", "--flops", "1e11,abc"], "--flops"),
    (["scaling", "sweep", "--data", "{root}", "--out", "{root}/out", "--params", "all"], "--params"),
    (["scaling", "sweep", "--data", "{root}", "--out", "{root}/out", "--batch-size", "0"], "--batch-size"),
    (["scaling", "sweep", "--data", "{root}", "--out", "{root}/out", "--lr-multipliers", ","], "--lr-multipliers"),
    (["scaling", "sweep", "--data", "{root}", "--out", "{root}/out", "--eval-batches", "-1"], "--eval-batches"),
    (["scaling", "fit", "{root}/out"], "sweep_config.json"),
    (["scaling", "fit", "{root}/sweep"], "--widths"),
    (["eval", "mc", "--checkpoint", "{root}/nowhere"], "nowhere"),
    (["eval", "mc", "--checkpoint", "{root}/ckpt", "--normalisation", "bytes"], "--normalisation"),
    (["eval", "mc", "--checkpoint", "{root}/ckpt", "--tasks", "{root}/mc.jsonl", "--format", "mmlu2"], "--format"),
    (["eval", "mc", "--checkpoint", "{root}/ckpt", "--tasks", "{root}/mc.jsonl", "--format", "piqa"], "line 1"),
    (["eval", "mc", "--checkpoint", "{root}/ckpt", "--builtin", "trivia"], "--builtin"),
    (["eval", "mc", "--checkpoint", "{root}/ckpt", "--count", "0"], "--count"),
    (["eval", "mc", "--checkpoint", "{root}/ckpt", "--tasks", "{root}/tok"], "tok"),
    (["eval", "mc", "--params", "{root}/nowhere.bin"], "nowhere.bin"),
    (["eval", "mc", "--params", "{root}/mc.jsonl"], "mc.jsonl"),
    (["eval", "bpb", "--checkpoint", "{root}/ckpt", "--data", "{root}", "--batch-size", "0"], "--batch-size"),
    (["eval", "bpb", "--checkpoint", "{root}/ckpt", "--data", "{root}/nowhere"], "nowhere"),
])
def test_flags_evaluation(evaluation_inputs, argv, culprit):
    root = evaluation_inputs["root"]
    before = tree_digest(root)
    assert_refused(run_cli([a.format(root=root) for a in argv]), culprit)
    assert tree_digest(root) == before


RLHF_ROWS = [
    (["--group-size", "1"], "--group-size"),
    (["--temperature", "0"], "--temperature"),
    (["--top-p", "2"], "--top-p"),
    (["--lr", "nan"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--lam", "1.5"], "--lam"),
    (["--rewards", "vibes"], "--rewards"),
    (["--rewards", "reward_model"], "--reward-model"),
    (["--algo", "dqn"], "--algo"),
    (["--device", "tpu"], "--device"),
    (["--threads", "0"], "--threads"),
]


@pytest.mark.parametrize("extra, culprit", RLHF_ROWS, ids=[" ".join(r[0]) for r in RLHF_ROWS])
def test_flags_rlhf_train(checkpoint, tmp_path, extra, culprit):
    out = tmp_path / "rl"
    assert_refused(run_cli(["rlhf", "train", "--checkpoint", checkpoint, "--out", out, *extra]), culprit)
    assert not out.exists()


@pytest.mark.parametrize("extra", [["--group-minibatches=yes"], ["--no-group-minibatches=1"]])
def test_flags_rlhf_train_grpo(checkpoint, tmp_path, extra):
    out = tmp_path / "rl"
    assert_refused(run_cli(["rlhf", "train", "--checkpoint", checkpoint, "--out", out, *extra]), "group-minibatches")
    assert not out.exists()


def test_flags_rlhf_train_missing_checkpoint(tmp_path):
    out = tmp_path / "rl"
    assert_refused(run_cli(["rlhf", "train", "--checkpoint", tmp_path / "nothing", "--out", out]), "nothing")
    assert not out.exists()


def _edit_json(path, **fields):
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


IMPORT_HF_DAMAGE = [  # (what is done to a good folder, culprit the one-line refusal names)
    (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json"),
    (lambda f: (f / "model.safetensors").unlink(), "model.safetensors"),
    (lambda f: (f / "config.json").unlink(), "config.json"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]),
     "model.safetensors"),
    (lambda f: _edit_json(f / "config.json", model_type="gpt2"), "model_type"),
    (lambda f: _edit_json(f / "config.json", rope_scaling={"rope_type": "llama3", "factor": 8.0}), "rope_scaling"),
    (lambda f: _edit_json(f / "config.json", rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (lambda f: _edit_json(f / "config.json", attention_bias=True), "attention_bias"),
    (lambda f: _edit_json(f / "config.json", head_dim=32), "head_dim"),
    (lambda f: _edit_json(f / "config.json", intermediate_size=128), "mlp.up_proj.weight has shape"),
    (lambda f: _edit_json(f / "config.json", num_hidden_layers=3), "model.layers.2"),
    (lambda f: _edit_json(f / "config.json", hidden_act="gelu"), "hidden_act"),
    (lambda f: _edit_json(f / "tokenizer.json", model={"type": "WordPiece", "vocab": {}}), "'model'"),
    (lambda f: _edit_json(f / "tokenizer.json", normalizer={"type": "Lowercase"}), "normalizer"),
]


@pytest.mark.parametrize("damage,culprit", IMPORT_HF_DAMAGE)
def test_flags_import_hf_bad_folders(tmp_path, damage, culprit):
    """A folder that is incomplete, damaged or outside what lmforge's model computes is refused in one line
    naming the file or field, and nothing is written."""
    from test_import_hf import hf_folder

    folder = tmp_path / "hf"
    hf_folder(folder)
    damage(folder)
    before = tree_digest(tmp_path)
    assert_refused(run_cli(["import", "hf", folder, "--out", tmp_path / "ckpt"]), culprit)
    assert tree_digest(tmp_path) == before and not (tmp_path / "ckpt").exists()


def test_flags_import_hf_arguments(tmp_path):
    assert_refused(run_cli(["import", "hf", tmp_path / "nothing", "--out", tmp_path / "ckpt"]), "nothing")
    (tmp_path / "hf").mkdir()
    assert_refused(run_cli(["import", "hf", tmp_path / "hf", "--out", tmp_path / "ckpt", "--block-size", "0"]),
                   "--block-size")


LORA_ROWS = [
    (["sft"], ["--lora-rank", "-1"], "--lora-rank"),
    (["sft"], ["--lora-rank", "4", "--lora-alpha", "0"], "--lora-alpha"),
    (["sft"], ["--lora-rank", "4", "--lora-alpha", "nan"], "--lora-alpha"),
    (["sft"], ["--lora-rank", "4", "--lora-targets", "q_proj"], "--lora-targets"),
    (["sft"], ["--merge"], "--merge"),
    (["sft"], ["--lora-rank", "4", "--fsdp"], "--lora-rank"),
    (["dpo"], ["--lora-rank", "1e9"], "--lora-rank"),
    (["dpo"], ["--merge"], "--merge"),
]


@pytest.mark.parametrize("verb, extra, culprit", LORA_ROWS, ids=[" ".join(r[0] + r[1]) for r in LORA_ROWS])
def test_flags_lora(tmp_path, verb, extra, culprit):
    out = tmp_path / "run"
    data = ["--data", tmp_path / "pairs.jsonl"] if verb == ["dpo"] else []
    assert_refused(run_cli([*verb, "--checkpoint", tmp_path / "base", *data, "--out", out, *extra]), culprit)
    assert not out.exists()

@pytest.mark.parametrize("host", ["http://example.com", "example.com:8080", "example.com/docs", ""])
def test_flags_llmos_browse_allow(host, tmp_path):
    """`chat --browse-allow` takes a host only; anything else is refused naming the flag, before a model loads."""
    _refused_without_output(["chat", "--browse-allow", host], "--browse-allow", tmp_path / "no_checkpoint", tmp_path)


@pytest.mark.parametrize("argv,culprit", [
    (["--tools", "calculator,shell"], "--tools"),
    (["--tools", "search"], "--search-dir"),
    (["--tools", "search", "--search-dir", "/nonexistent/folder"], "--search-dir"),
    (["--tools", "browse", "--browse-allow", "http://example.com"], "--browse-allow"),
    (["--tools", "calculator", "--max-tool-calls", "-1"], "--max-tool-calls"),
])
def test_flags_llmos_serve_tools(argv, culprit, tmp_path):
    """`serve`'s tool flags are checked before a model loads; each refusal names its flag."""
    assert_refused(run_cli(["serve", "--checkpoint", str(tmp_path), "--device", "cpu", *argv]), culprit)

def test_flags_serve_params(tmp_path):
    """`lmforge serve --params`: with --checkpoint, absent, or damaged (a header that cannot be a parameter file);
    refused before anything is served or written."""
    pytest.importorskip("fastapi")
    damaged = tmp_path / "damaged.bin"
    damaged.write_bytes(b"LMFG" + b"\0" * 60)
    before = tree_digest(tmp_path)
    assert_refused(run_cli(["serve", "--checkpoint", str(tmp_path), "--params", str(damaged)]), "--checkpoint")
    assert_refused(run_cli(["serve", "--params", str(tmp_path / "absent.bin"), "--device", "cpu"]), "absent.bin")
    assert_refused(run_cli(["serve", "--params", str(damaged), "--device", "cpu"]), "damaged.bin")
    assert tree_digest(tmp_path) == before


ENDPOINT_ROWS = [
    (["eval", "mc", "--endpoint", "http://203.0.113.9:8000", "--builtin", "stdlib_module"], "--allow-remote"),
    (["eval", "mc", "--endpoint", "ftp://127.0.0.1", "--builtin", "stdlib_module"], "--endpoint"),
    (["eval", "mc", "--endpoint", "http://127.0.0.1:99999", "--builtin", "stdlib_module"], "--endpoint"),
    (["eval", "mc", "--endpoint", "http://127.0.0.1:9", "--parallel", "0", "--builtin", "stdlib_module"],
     "--parallel"),
    (["eval", "mc", "--endpoint", "http://127.0.0.1:9", "--timeout", "nan", "--builtin", "stdlib_module"],
     "--timeout"),
    (["eval", "mc", "--endpoint", "http://127.0.0.1:9", "--model", "m", "--builtin", "stdlib_module"],
     "--endpoint"),  # nothing listens on port 9 (discard): a one-line connection error
    (["eval", "bpb", "--endpoint", "http://127.0.0.1:9", "--data", "shards"], "--text"),
    (["eval", "bpb", "--endpoint", "http://127.0.0.1:9", "--text", "t.txt", "--chunk-chars", "3"],
     "--chunk-chars"),
]


@pytest.mark.parametrize("argv,culprit", ENDPOINT_ROWS, ids=[" ".join(a[2:4]) + " " + c for a, c in ENDPOINT_ROWS])
def test_flags_endpoint(argv, culprit, checkpoint, tmp_path):
    """Bad --endpoint flags are refused before any request; a flag of --endpoint without it too."""
    (tmp_path / "t.txt").write_text("held-out text\n")
    argv = [str(tmp_path / a) if a in ("t.txt", "shards") else a for a in argv]
    assert_refused(run_cli(argv), culprit)
    assert_refused(run_cli(["eval", "mc", "--checkpoint", str(checkpoint), "--api-key", "k"]), "--endpoint")

SECURITY_POISONING_REFUSALS = [
    (["poison-pretrain", "--shards", "{tmp}/none", "--out", "{tmp}/o"], "--shards"),
    (["poison-pretrain", "--shards", "{tmp}", "--out", "{tmp}/o", "--epochs", "0"], "--epochs"),
    (["poison-pretrain", "--shards", "{tmp}", "--out", "{tmp}/o", "--gibberish-min", "9", "--gibberish-max", "3"],
     "--gibberish-max"),
    (["poison-pretrain", "--shards", "{tmp}", "--out", "{tmp}/o", "--gibberish-factor", "1"], "--gibberish-factor"),
    (["poison-pretrain", "--shards", "{tmp}", "--out", "{tmp}/o", "--sweep-documents", "50"], "--sweep-k"),
    (["poison-pretrain", "--shards", "{tmp}", "--out", "{tmp}/o", "--init-from", "{tmp}"], "--init-from"),
    (["poison-preference", "--checkpoint", "{tmp}", "--out", "{tmp}/o", "--k", "0"], "--k"),
    (["poison-preference", "--checkpoint", "{tmp}", "--out", "{tmp}/o", "--heldout", "-1"], "--heldout"),
    (["poison-preference", "--checkpoint", "{tmp}", "--out", "{tmp}/o", "--pairs", "{tmp}/p.jsonl"], "--checkpoint"),
]


@pytest.mark.parametrize("argv,culprit", SECURITY_POISONING_REFUSALS)
def test_flags_security_poisoning(tmp_path, argv, culprit):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    before = tree_digest(*sorted(tmp_path.rglob("*")))
    outcome = run_cli(["security", *[a.replace("{tmp}", str(tmp_path)) for a in argv]])
    assert_refused(outcome, culprit)
    assert tree_digest(*sorted(tmp_path.rglob("*"))) == before and not (tmp_path / "o").exists()
