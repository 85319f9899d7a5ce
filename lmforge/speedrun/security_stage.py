"""The speedrun's `security` stage: a short scan of the final assistant (`lmforge security scan` on a fixed small
subset of every suite: harmful requests, XSTest's safe look-alikes, jailbreak templates, role play, encodings,
system-prompt extraction and indirect prompt injection), its table in the stage folder (`scan.md`, with every answer
and verdict in `responses.jsonl`) and each suite's rate and interval in the summary the report card shows. The
attack data are the shared data's `alignment/`; a checkout without them records the stage as skipped, saying why,
rather than failing the run. Last in the stage table, so the folders of runs made before it keep their numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.speedrun.context import SpeedrunContext
from lmforge.speedrun.settings import SECURITY_SCAN


def stage_security(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Scan the SFT checkpoint with the preset's case count; the summary holds each suite's rate and interval."""
    from lmforge.inference.engine import Engine
    from lmforge.security.lineage import trained_refusals
    from lmforge.security.scan import ScanConfig, run_scan
    from lmforge.security.suites import build_cases
    from lmforge.security.targets import EngineTarget
    from lmforge.utils import shared_data_dir

    shared = shared_data_dir()
    data = shared / "alignment" if shared is not None else None
    if data is None or not (data / "safety").is_dir():
        return {"skipped": "no shared alignment data (set LMFORGE_SHARED_DATA to the folder holding alignment/)"}
    cfg = ScanConfig(**SECURITY_SCAN.get(ctx.preset, SECURITY_SCAN["default"]), seed=ctx.seed)
    cases = build_cases(cfg.suites, data, cfg.limit, cfg.seed, cfg.harmbench_split)
    checkpoint = ctx.need("sft", "checkpoint")
    target = EngineTarget(Engine.from_checkpoint(checkpoint), cfg.max_tokens, cfg.batch_size)
    suites = run_scan(target, cases, cfg, out, trained_refusals(checkpoint))  # marks sources seen in training
    return {"table": str(out / "scan.md"), "cases_per_source": cfg.limit, "max_tokens": cfg.max_tokens,
            "suites": {s["suite"]: {"measure": s["metric"], "rate": s["rate"], "ci95_low": s["ci95"][0],
                                    "ci95_high": s["ci95"][1], "answered": s["answered"], "cases": s["cases"]}
                       for s in suites}}
