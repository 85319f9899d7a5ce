"""What every exporter does with its `--out`: check it is of the right kind before any work, and leave what it
wrote readable by everyone (the files are meant to be shared and served, and a private temporary folder or a
library's own temporary file would otherwise leave them 0600)."""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.utils import LmforgeError

FILE_MODE, FOLDER_MODE = 0o644, 0o755


def check_out(path: str | os.PathLike, kind: str, marker: str = "") -> Path:
    """`--out` as a `kind` ("file" or "folder") path, or a one-line refusal naming the flag.

    A folder output replaces an existing folder as a whole, so one is only replaced when it holds `marker` (a file
    every earlier export of the same format wrote) or nothing: `--out ~` must never empty a home folder."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise LmforgeError(f"--out {path} is an existing folder; this export writes one file, give its path")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise LmforgeError(f"--out {path} is an existing file; this export writes a folder")
    if kind == "folder" and path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise LmforgeError(f"--out {path} is a folder that holds no earlier export (no {marker}); refusing to "
                           "replace it, give a new or empty folder")
    ancestor = next((p for p in path.parents if p.exists() or p.is_symlink()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise LmforgeError(f"--out {path}: {ancestor} is not a folder")
    return path


def make_readable(path: str | os.PathLike) -> None:
    """Give a written file, or a folder and everything in it, the modes of a shared artifact (0644 / 0755)."""
    path = Path(path)
    if path.is_dir():
        for p in path.rglob("*"):
            p.chmod(FOLDER_MODE if p.is_dir() else FILE_MODE)
    path.chmod(FOLDER_MODE if path.is_dir() else FILE_MODE)
