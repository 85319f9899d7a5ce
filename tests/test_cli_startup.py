"""`lmforge --help` and every verb's `--help` stay fast: building the command line imports no heavy library.

Every verb's flags are generated from its config dataclass, so building the parser imports every stage's config
module. A config that lives in a module importing torch (as the SFT, reward, DPO and RL configs once did) makes
every `lmforge ...` call, even `--help` or a refused flag, pay torch's import (about 1.5 s on two cores). The
check runs in a fresh interpreter, since this test process has long imported torch itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Libraries no verb needs for its flags: each costs from a tenth of a second (pyarrow, fastapi) to seconds (torch,
# transformers) at start-up.
HEAVY = ("torch", "transformers", "pandas", "pyarrow", "fastapi", "uvicorn", "safetensors", "tokenizers",
         "datasets", "matplotlib", "scipy")

# Builds the whole parser, asks every verb and sub-verb for its help (as `lmforge VERB --help` does), and reports
# which heavy libraries were imported along the way, and which help pages were printed.
PROBE = """
import argparse, contextlib, io, json, sys
from lmforge.cli import build_parser

def leaves(parser, path):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    yield path
    for action in subs:
        for name, child in action.choices.items():
            yield from leaves(child, path + [name])

parser = build_parser()
after_build = sorted(m for m in HEAVY if m in sys.modules)
helped = []
for path in leaves(parser, []):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            parser.parse_args(path + ["--help"])
        except SystemExit:
            pass
    if "usage:" in out.getvalue():
        helped.append(" ".join(path))
print(json.dumps({"after_build": after_build, "after_help": sorted(m for m in HEAVY if m in sys.modules),
                  "helped": helped}))
"""


def _probe() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cli_parser_and_every_verb_help_import_no_heavy_library():
    result = _probe()
    assert result["after_build"] == [], f"building the parser imported {result['after_build']}"
    assert result["after_help"] == [], f"a verb's --help imported {result['after_help']}"
    # the probe reached the verbs whose configs once pulled torch in, and their sub-verbs
    for verb in ("", "sft", "sft data", "reward train", "dpo", "rlhf train", "eval winrate", "import hf"):
        assert verb in result["helped"]
