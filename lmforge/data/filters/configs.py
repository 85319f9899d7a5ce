"""Step chains for the two kinds of input: web crawls (FineWeb's chain, published thresholds) and the embedded
pydoc corpus (technical documentation, where some web rules misfire).

Each chain is a list of step specs for `lmforge.data.filters.build_steps` (the runner adds `dedup`). Every
departure from a step's defaults carries a `why`, and the report shows what each rule dropped, so the relaxations
are visible and checkable. Numbers quoted below were measured on 80 module pages of the standard library rendered
by pydoc (`benchmarks/bench_data_filters.py --pydoc` prints the kept/dropped counts of both chains).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.utils import LmforgeError

# FineWeb's chain (datatrove's `examples/fineweb.py`): only C4's terminal-punctuation rule is off, because FineWeb
# replaced it with its own line-punctuation ratio, which removed fewer good documents.
FINEWEB_STEPS: list[dict[str, Any]] = [
    {"step": "url_filter"},
    {"step": "extract"},
    {"step": "language"},
    {"step": "gopher_repetition"},
    {"step": "gopher_quality"},
    {"step": "c4_quality", "filter_no_terminal_punct": False,
     "why": "FineWeb's setting: its line-punctuation ratio replaces C4's per-line terminal-punctuation rule"},
    {"step": "fineweb_quality"},
    {"step": "dedup"},
    {"step": "pii"},
]

# pydoc's page chrome: the version banner and search forms floating at the top, and the source-file path cell.
PYDOC_SKIP_ELEMENTS = ['body > div[style^="float"]', "td.extra"]

PYDOC_STEPS: list[dict[str, Any]] = [
    {"step": "url_filter"},
    {"step": "extract", "mode": "resiliparse", "skip_elements": PYDOC_SKIP_ELEMENTS,
     "why": "pydoc pages are tables of <dl> definitions: trafilatura with favor_precision kept 70% of their "
            "visible words on average (json: 29%, it treats the function tables as boilerplate) and flattened each "
            "docstring into one table row; resiliparse keeps 98% with every docstring's line breaks, ~30x faster. "
            "The selectors remove pydoc's banner, search forms and file path"},
    {"step": "language", "threshold": 0.4,
     "why": "identifiers and signatures dilute the English score: module pages score 0.41-0.92 for 'en' with "
            "lid.176; 0.65 dropped 1 in 4 of them. The link-list pages (index, topics) stay below 0.4"},
    {"step": "repeated_lines",
     "why": "pydoc repeats every inherited method's documentation in each subclass (ast: 83% repeated lines); "
            "keeping each line once keeps all the information and lets the repetition rules judge the rest"},
    {"step": "gopher_repetition",
     "dup_n_grams": [[5, 0.35], [6, 0.35], [7, 0.35], [8, 0.35], [9, 0.35], [10, 0.35]],
     "why": "API documentation restates the same phrases for each function ('Return a new ...', parameter "
            "descriptions): up to 0.32 of characters in repeated 5-grams after repeated lines are removed"},
    {"step": "gopher_quality", "min_alpha_words_ratio": 0.7,
     "why": "signatures and literals such as (0, 1) or '%Y-%m-%d' are words without letters: module pages reach "
            "0.79"},
    {"step": "c4_quality", "filter_no_terminal_punct": False, "min_words_per_line": 0, "remove_citations": False,
     "filter_curly_bracket": False, "keep_layout": True,
     "why": "C4 drops any page with '{' (dict literals, format strings: most module pages), removes lines of "
            "fewer than 3 words (signatures, member names), deletes '[0]'-style 'citations' from code and strips "
            "every line (the indentation of code examples); its lorem-ipsum, javascript, policy and 5-sentence "
            "rules stay"},
    {"step": "fineweb_quality", "line_punct_thr": 0.0, "short_line_thr": 0.85,
     "why": "docstrings and the language-reference topics are hard-wrapped at ~70 columns and signature lines "
            "end without punctuation, so the line-punctuation ratio measures line wrapping here (module pages: "
            "7%-49%, the 'Truth Value Testing' topic 4%): it is off. Signatures are short lines (up to 78% of a "
            "module page); the link-list pages (index, topics: >98% short lines) are still dropped"},
    {"step": "dedup"},
    {"step": "pii"},
]

CONFIGS: dict[str, list[dict[str, Any]]] = {"fineweb": FINEWEB_STEPS, "pydoc": PYDOC_STEPS}


def config_steps(name: str) -> list[dict[str, Any]]:
    """A fresh copy of a built-in chain's specs (callers may edit it)."""
    import copy

    return copy.deepcopy(CONFIGS[name])


def add_blocklists(steps: list[dict[str, Any]], paths: list[str], flag: str = "--blocklist") -> None:
    """Give every `url_filter` of a chain more blocklists (UT1 folders or list files), in place, by absolute path
    (the run record pins them, and workers may start elsewhere). A chain without a URL filter, or a path that
    does not exist, is an error that names the flag: the user asked for lists that would otherwise do nothing."""
    filters = [s for s in steps if isinstance(s, dict) and s.get("step") == "url_filter"]
    if not filters:
        raise LmforgeError(f"{flag}: the config has no url_filter step to give the lists to")
    resolved = []
    for p in paths:
        if not Path(p).exists():
            raise LmforgeError(f"{flag} {p}: no such folder or file")
        resolved.append(str(Path(p).resolve()))
    for spec in filters:
        existing = spec.get("blocklists", [])
        if not isinstance(existing, list):
            raise LmforgeError(f"url_filter: blocklists must be a list of paths, got {existing!r}")
        spec["blocklists"] = existing + resolved
