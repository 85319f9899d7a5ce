"""The unit that flows through the data pipeline (the same idea as datatrove's Document)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """One web page or text file on its way through the pipeline.

    `text` holds raw HTML until the extraction step replaces it with plain text; every step records what it
    measured in `metadata` (language, scores, dedup cluster, ...), so the kept and dropped outputs explain
    themselves.
    """

    text: str
    id: str
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
