"""The per-document steps of the web pipeline, one small module per idea, and a builder from a config.

A step config is a list of specs, one dict per step, in pipeline order: `{"step": NAME, PARAM: VALUE, ...}`, with
the step's constructor parameters (its dataclass fields; defaults are the published ones). A spec may carry a
`"why"` string: it is not a parameter, it documents a departure from the defaults and the report can show it.
`build_steps(specs, registry)` turns the specs into step objects; the runner passes a registry that extends
`STEPS` with its own steps (deduplication) so one config file lists the whole chain.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lmforge.data.base import Step
from lmforge.data.filters.c4 import C4QualityFilter
from lmforge.data.filters.extract import Extract
from lmforge.data.filters.fineweb import FineWebQualityFilter
from lmforge.data.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from lmforge.data.filters.language import LanguageFilter
from lmforge.data.filters.lines import RepeatedLinesFilter
from lmforge.data.filters.pii import PIIStep
from lmforge.data.filters.url import URLFilter
from lmforge.utils import LmforgeError

STEPS: dict[str, type[Step]] = {
    URLFilter.name: URLFilter,
    Extract.name: Extract,
    LanguageFilter.name: LanguageFilter,
    RepeatedLinesFilter.name: RepeatedLinesFilter,
    GopherRepetitionFilter.name: GopherRepetitionFilter,
    GopherQualityFilter.name: GopherQualityFilter,
    C4QualityFilter.name: C4QualityFilter,
    FineWebQualityFilter.name: FineWebQualityFilter,
    PIIStep.name: PIIStep,
}

SPEC_KEYS = ("step", "why")  # keys of a spec that are not constructor parameters


def build_step(spec: dict[str, Any], registry: dict[str, type[Step]] | None = None, where: str = "config") -> Step:
    """One step from its spec; an unknown step or parameter is an error that names it."""
    registry = STEPS if registry is None else registry
    if not isinstance(spec, dict) or "step" not in spec:
        raise LmforgeError(f"{where}: each step must be an object with a 'step' field, got {spec!r}")
    name = spec["step"]
    cls = registry.get(name)
    if cls is None:
        raise LmforgeError(f"{where}: unknown step {name!r} (known: {', '.join(sorted(registry))})")
    params = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
    if dataclasses.is_dataclass(cls):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise LmforgeError(f"{where}: step {name!r} has no parameter {', '.join(unknown)} "
                               f"(parameters: {', '.join(sorted(known))})")
    try:
        return cls(**params)
    except TypeError as e:
        raise LmforgeError(f"{where}: step {name!r}: {e}") from e


def build_steps(specs: list[dict[str, Any]], registry: dict[str, type[Step]] | None = None,
                where: str = "config") -> list[Step]:
    """The steps of a chain, in the order the specs list them."""
    if not isinstance(specs, list):
        raise LmforgeError(f"{where}: 'steps' must be a list of step objects")
    return [build_step(s, registry, f"{where} step {i}") for i, s in enumerate(specs)]


__all__ = ["STEPS", "build_step", "build_steps", "C4QualityFilter", "Extract", "FineWebQualityFilter",
           "GopherQualityFilter", "GopherRepetitionFilter", "LanguageFilter", "PIIStep", "RepeatedLinesFilter",
           "URLFilter"]
