"""Hostile inputs, class "leftovers" of issue 13: a `kill -9` leaves no process running and no temporary file that
outlives the next start, and the next start finishes with the output an uninterrupted run gives."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmforge.data.base import Filter
from lmforge.data.document import Document

REPO = Path(__file__).resolve().parent.parent


@dataclass
class SlowKeep(Filter):
    """Keeps every document, `delay` seconds each: a run slow enough to be killed in the middle of writing."""

    delay: float = 0.0
    name = "slow_keep"

    def keep(self, doc: Document) -> str | None:
        time.sleep(self.delay)
        return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie (a killed worker whose new parent does not reap it is gone all the same)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _config(path: Path, delay: float) -> Path:
    path.write_text(json.dumps({"name": "slow", "steps": [{"step": f"{__name__}:SlowKeep", "delay": delay}]}))
    return path


def _data_run(inputs: Path, out: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "lmforge", "data", "run", "--input", str(inputs), "--out", str(out),
            "--config", str(config), "--workers", "2", "--min-tasks", "2"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(180)
def test_leftovers_data_run_killed_workers_die_and_rerun_cleans_up(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in range(2):
        with gzip.open(inputs / f"part{f}.jsonl.gz", "wt") as out:
            out.writelines(json.dumps({"id": f"f{f}-{i}", "text": f"document {i} of file {f} " * 20}) + "\n"
                           for i in range(50))
    out = tmp_path / "out"
    slow = _config(tmp_path / "slow.json", 0.04)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)]),
           "LMFORGE_THREADS": "1"}
    parent = subprocess.Popen(_data_run(inputs, out, slow), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and parent.poll() is None:  # both workers busy writing their first files
        workers = _children(parent.pid)
        if len(workers) >= 2 and len(list((out / "documents").glob(".*.tmp"))) >= 1:
            break
        time.sleep(0.05)
    assert parent.poll() is None, "the run finished before it could be killed"
    workers = [w for w in _children(parent.pid) if _alive(w)]
    assert workers and list(out.rglob(".*.tmp"))  # killed mid-write: there are temporaries to leave behind
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    killed_at = time.monotonic()
    while any(_alive(w) for w in workers) and time.monotonic() - killed_at < 5:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "workers outlived their killed parent"
    assert time.monotonic() - killed_at < 2.0

    subprocess.run(_data_run(inputs, out, slow), env=env, check=True, capture_output=True, timeout=150)
    assert list(out.rglob("*.tmp")) == []  # the killed run's temporaries are gone
    clean = tmp_path / "clean"
    subprocess.run(_data_run(inputs, clean, _config(tmp_path / "fast.json", 0.0)), env=env, check=True,
                   capture_output=True, timeout=150)
    for folder in ("documents", "excluded"):
        files = sorted(p.relative_to(out) for p in (out / folder).iterdir())
        assert files == sorted(p.relative_to(clean) for p in (clean / folder).iterdir())
        assert all((out / f).read_bytes() == (clean / f).read_bytes() for f in files)
    assert json.loads((out / "report.json").read_text())["kept"]["documents"] == 100
