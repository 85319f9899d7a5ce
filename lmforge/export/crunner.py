"""Build `runner/run.c` with the system C compiler and run it: used by the speedrun's export stage and the benchmark.

The runner is one C99 file with no dependency beyond libc and libm, so building it is one compiler call; this module
only finds the compiler, picks the flags this machine accepts, and reads the speeds the runner reports.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lmforge.utils import LmforgeError, repo_root

RUN_C = repo_root() / "runner" / "run.c"
_SPEEDS = re.compile(r"prefill: (\d+) tokens, ([\d.]+) tok/s; decode: (\d+) tokens, ([\d.]+) tok/s")


def find_compiler() -> str:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    raise LmforgeError("no C compiler found (set CC, or install gcc or clang) to build runner/run.c")


def build_runner(out_dir: str | Path, native: bool = True, openmp: bool = False, fast_math: bool = False,
                 name: str = "run") -> Path:
    """Compile run.c into `out_dir/name`; `native` adds -march=native where the compiler accepts it."""
    if not RUN_C.is_file():
        raise LmforgeError(f"the C runner's source is missing: {RUN_C}")
    cc = find_compiler()
    out = Path(out_dir) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = ["-O3", "-std=c99"] + (["-ffast-math"] if fast_math else []) + (["-fopenmp"] if openmp else [])
    attempts = [flags + ["-march=native"], flags] if native else [flags]
    err = ""
    for f in attempts:
        r = subprocess.run([cc, *f, "-o", str(out), str(RUN_C), "-lm"], capture_output=True, text=True)
        if r.returncode == 0:
            return out
        err = r.stderr
    raise LmforgeError(f"{cc} could not build {RUN_C}:\n{err.strip()}")


@dataclass
class RunResult:
    text: str
    prefill_tokens: int
    prefill_tok_s: float
    decode_tokens: int
    decode_tok_s: float


def run_runner(binary: str | Path, params_file: str | Path, prompt: str, steps: int = 100, temperature: float = 0.8,
               top_p: float = 0.9, seed: int = 1337, threads: int = 1, extra: list[str] | None = None,
               timeout: float = 600) -> RunResult:
    """Let the C runner continue `prompt` (or answer it, with `extra=["-m", "chat"]`); returns what it printed (the
    prompt, then its continuation; in a chat the answer) and the speeds it measured itself."""
    cmd = [str(binary), str(params_file), "-i", prompt, "-n", str(steps), "-t", str(temperature), "-p", str(top_p),
           "-s", str(seed), *(extra or [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise LmforgeError(f"the C runner failed on {params_file}: {r.stderr.decode(errors='replace').strip()}")
    m = _SPEEDS.search(r.stderr.decode(errors="replace"))
    if m is None:
        raise LmforgeError(f"the C runner printed no speeds: {r.stderr.decode(errors='replace')[-500:]}")
    return RunResult(r.stdout.decode("utf-8", errors="replace").rstrip("\n"), int(m[1]), float(m[2]), int(m[3]),
                     float(m[4]))
