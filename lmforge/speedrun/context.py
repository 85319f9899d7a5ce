"""What every speedrun stage receives: the run folder, the thread count, the sizes to use and the earlier stages'
summaries (read back from their `DONE.json` markers when a run resumes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.speedrun.settings import PRESETS, SEED, Settings
from lmforge.utils import LmforgeError, read_json

MARKER = "DONE.json"  # a finished stage's summary, written last in its folder


@dataclass
class SpeedrunContext:
    out: Path
    threads: int
    seed: int = SEED
    preset: str = "default"  # a name in `settings.PRESETS`: same stages, different sizes
    results: dict[str, Any] = field(default_factory=dict)  # each stage's summary, by stage name
    inputs: list[str] | None = None  # `--input`: the user's own files instead of the crawl (see `corpus.py`)

    @property
    def settings(self) -> Settings:
        return PRESETS[self.preset]

    def need(self, stage: str, key: str) -> Any:
        """An earlier stage's output (e.g. the crawl's `warc_dir`), or a clear error naming what is missing."""
        value = self.results.get(stage, {}).get(key)
        if not value:
            raise LmforgeError(f"this stage needs the {stage} stage's {key!r}: run that stage first "
                               f"(its folder in {self.out} has no DONE.json)")
        return value


def read_marker(marker: Path) -> dict[str, Any]:
    """A finished stage's summary. A marker that is not a JSON object with numeric `seconds` (edited, or damaged on
    disk: the run writes it atomically) is an error naming the file rather than a guess: deleting it redoes the
    stage, which resumes from whatever that stage left."""
    hint = "delete it to run the stage again"
    try:
        result = read_json(marker, "speedrun stage marker")
    except LmforgeError as e:
        raise LmforgeError(f"{e}; {hint}") from e
    if not isinstance(result, dict) or not isinstance(result.get("seconds", 0), (int, float)):
        raise LmforgeError(f"speedrun stage marker {marker} is corrupt: not a stage summary; {hint}")
    return result
