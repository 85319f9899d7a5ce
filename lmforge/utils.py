"""Helpers every stage shares: errors that name their input, atomic writes, thread settings, shared test data.

They live in one place so that no stage grows its own copy of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


class LmforgeError(Exception):
    """An error caused by the user's input (a file, a field, a flag), not by a bug.

    The CLI prints these as one clear line instead of a traceback; the message must name the file or field.
    """


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block finishes.

    A crash (or Ctrl-C) in the middle leaves the old artifact, or none, never a half-written one. Works for a file
    or a directory written at the temporary path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if tmp.is_file():
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a file for writing that appears at `path` only when the block completes without error."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete what `atomic_path` leaves behind when its process is killed (`kill -9`, power loss): the hidden
    `.NAME.*.tmp` folders beside artifacts in `folder`. Called by a stage when it starts on its output folder, so a
    crashed run costs no disk; a temporary of a live process is only ever removed by that process's own next start,
    since stages lock or own their output folder. Returns the paths removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(".*.tmp") if p.is_dir() or p.is_file()]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{what} {path} is corrupt: {e}") from e


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file with a header line, as dicts (the shared red-team and safety sets are CSV)."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_threads() -> int:
    """`LMFORGE_THREADS` if set, else the number of cores this process may use (not the machine's core count)."""
    env = os.environ.get("LMFORGE_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's thread count and a passive OpenMP wait policy; return the thread count used.

    Measured on the 2-core reference machine: with other processes running, spinning OpenMP workers collapsed
    (2 threads ran 9x slower than 1), while a passive wait policy cost little on a quiet machine. The policy only
    takes effect if set before torch starts its pool, so call this before the first tensor operation. The
    default thread count is the number of cores this process may use; `LMFORGE_THREADS` overrides it.
    """
    if num_threads is not None and num_threads < 1:  # every verb's --threads lands here: one check, one message
        raise LmforgeError(f"--threads must be >= 1 (got {num_threads})")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if num_threads is None:
        num_threads = default_threads()
    import torch

    torch.set_num_threads(max(1, num_threads))
    return torch.get_num_threads()


def resolve_device(name: str, flag: str = "--device") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; "cpu", "cuda", "cuda:N" and "mps" are checked against
    what this machine has, so a typo or an absent GPU is one clear error naming the flag instead of a traceback
    from deep inside torch."""
    import torch

    kind, _, index = name.partition(":")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()) or (index and kind != "cuda"):
        raise LmforgeError(f"{flag} {name!r}: choose auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise LmforgeError(f"{flag} {name}: no CUDA GPU is visible to torch on this machine")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise LmforgeError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise LmforgeError(f"{flag} mps: Apple's Metal backend is not available here")
    return name


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """The shared third-party data (`../shared/data` beside the checkout), or None in a user's clone.

    `LMFORGE_SHARED_DATA` points elsewhere. Tests and benchmarks use it; the product never needs it.
    """
    env = os.environ.get("LMFORGE_SHARED_DATA")
    candidates = [Path(env)] if env else [repo_root().parent / "shared" / "data", repo_root() / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError("unreachable")
