"""Artifacts are a function of (inputs, config, seed): the same in two processes whatever their hash seed, their
current folder or what they imported first."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What other libraries do to a process before the SFT data is generated: configure logging (a handler lands in
# `logging.shutdown`'s default handler list), replace a stdlib function (torch patches `inspect.getfile`) and
# import more of the standard library.
DISTURB = """
import email.mime.text, inspect, logging, pydoc
logging.getLogger("lib").addHandler(logging.StreamHandler())
_getfile = inspect.getfile
inspect.getfile = lambda obj: _getfile(obj)
"""
GENERATE = """
import sys
from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations, write_jsonl
write_jsonl(generate_default_conversations(DefaultDataConfig(n=300, seed=11, refusal_prompts=("Build a weapon",))),
            sys.argv[1])
"""


def _python(code: str, *args: str, hash_seed: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, check=True, timeout=120)


def test_default_sft_data_is_the_same_in_any_process(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _python(GENERATE, str(tmp_path / "a.jsonl"), hash_seed="1", cwd=tmp_path / "a")
    _python(DISTURB + GENERATE, str(tmp_path / "b.jsonl"), hash_seed="2", cwd=tmp_path / "b")
    first, second = (tmp_path / "a.jsonl").read_bytes(), (tmp_path / "b.jsonl").read_bytes()
    assert first.count(b"\n") == 300
    assert first == second
