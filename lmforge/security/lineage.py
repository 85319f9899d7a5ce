"""Which harmful requests a scanned checkpoint was trained to refuse, as far as its run folders record it.

`lmforge sft data --refusal-prompts FILE --out F` writes refusals of real harmful requests (AdvBench's, typically)
and a digest of each request in `F.manifest.json`; `lmforge sft --data F` keeps those digests in its run's
`sft_summary.json` (data -> refusal_prompts). A scan's harmful suite draws from the same sources, so a case whose
request the model was trained to refuse measures memory, not generalisation: the scan marks it "seen in training"
and reports each source apart. A DPO or RL run names the checkpoint it started from (`base_checkpoint` in its
summary), so the record is found by walking back from the scanned checkpoint's run folder to the SFT run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.posttrain.refusal_data import prompt_digest
from lmforge.utils import LmforgeError, read_json

SFT_SUMMARY = "sft_summary.json"
LATER_STAGE_SUMMARIES = ("dpo_summary.json", "rl_summary.json", "reward_summary.json")
MAX_HOPS = 8  # runs walked back through base_checkpoint (a chain of stages is a handful long)


@dataclass(frozen=True)
class TrainedRefusals:
    """The harmful requests an SFT run refused in training (their `prompt_digest`s) and where that is recorded.
    `complete` is false when some of the run's data files had no manifest: a request missing from the digests may
    still have been trained on, so it counts as unknown rather than unseen."""

    digests: frozenset[str]
    complete: bool
    summary: Path
    files: tuple[str, ...]  # the request files the refusals came from (e.g. advbench_harmful_behaviors.csv)

    def seen(self, request: str) -> bool | None:
        """True: trained to refuse this request; False: not; None: not known."""
        if prompt_digest(request) in self.digests:
            return True
        return False if self.complete else None

    def describe(self) -> dict[str, Any]:
        return {"summary": str(self.summary), "complete": self.complete, "refusal_files": list(self.files),
                "requests": len(self.digests)}


def _from_sft_summary(path: Path) -> TrainedRefusals | None:
    """The record in an SFT run's summary; None for a run made before runs recorded it."""
    summary = read_json(path, "SFT summary")
    record = (summary.get("data") or {}).get("refusal_prompts") if isinstance(summary, dict) else None
    if record is None:
        return None
    sources = record.get("sources") if isinstance(record, dict) else None
    valid = isinstance(record, dict) and isinstance(record.get("complete"), bool) and isinstance(sources, list) \
        and all(isinstance(s, dict) and isinstance(s.get("digests"), list)
                and all(isinstance(d, str) for d in s["digests"]) for s in sources)
    if not valid:
        raise LmforgeError(f"{path}: field 'data.refusal_prompts' must hold 'complete' (true/false) and 'sources' "
                           "(objects with a list of 'digests')")
    return TrainedRefusals(digests=frozenset(d for s in sources for d in s["digests"]), complete=record["complete"],
                           summary=path, files=tuple(str(s.get("file", "")) for s in sources))


def _run_folder(checkpoint: Path) -> Path:
    """The run folder of a checkpoint (`RUN/ckpt/step_N` -> RUN; a LoRA run's `RUN/merged` -> RUN)."""
    from lmforge.checkpoint import CKPT_SUBDIR, resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    return ckpt.parent.parent if ckpt.parent.name == CKPT_SUBDIR else ckpt.parent


def trained_refusals(checkpoint: str | Path) -> TrainedRefusals | None:
    """The refusal record of the SFT run behind `checkpoint` (its own run, or the run a DPO/RL run started from);
    None when no run on the way records one (a model trained elsewhere, or before runs recorded it)."""
    path = Path(checkpoint)
    for _ in range(MAX_HOPS):
        run = _run_folder(path)
        if (run / SFT_SUMMARY).is_file():
            return _from_sft_summary(run / SFT_SUMMARY)
        later = next((run / name for name in LATER_STAGE_SUMMARIES if (run / name).is_file()), None)
        summary = read_json(later, "run summary") if later is not None else None
        base = summary.get("base_checkpoint") if isinstance(summary, dict) else None
        if not isinstance(base, str) or not Path(base).exists():
            return None
        path = Path(base)
    return None
