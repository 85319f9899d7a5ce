"""Refusal rate per source of a `lmforge security scan` (its responses.jsonl), with the scan's own intervals.

The scan's `harmful` suite pools HarmBench, AdvBench and Do-Not-Answer into one attack-success rate; refusal
training on AdvBench (`lmforge sft data --refusal-prompts`) makes the AdvBench part in-distribution, so the reported
figure must be HarmBench's alone. This splits the rows by source: refusal rate (1 - attack success) for each harmful
source and over-refusal for XSTest's safe prompts, each with the bootstrap 95% interval (1000 resamples, seed 0,
`security.scan.bootstrap_ci`) and the Wilson 95% interval.

    python benchmarks/refusal_by_source.py RUN/scan/responses.jsonl [MORE ...]
"""

from __future__ import annotations

import json
import sys

from lmforge.posttrain.reward import wilson_interval
from lmforge.security.scan import bootstrap_ci


def rates_by_source(path: str) -> dict[str, list[bool]]:
    """{source: [refused?]} for harmful rows, {"xstest_safe": [over-refused?]}; rows that errored are left out."""
    groups: dict[str, list[bool]] = {}
    for line in open(path, encoding="utf-8"):
        row = json.loads(line)
        if row.get("error") or row["suite"] not in ("harmful", "xstest_safe"):
            continue
        harmful = row["suite"] == "harmful"
        key = row["meta"].get("source", "harmful") if harmful else "xstest_safe"
        groups.setdefault(key, []).append(not row["success"] if harmful else bool(row["success"]))
    return groups


def main(paths: list[str]) -> None:
    for path in paths:
        print(path)
        for source, hits in rates_by_source(path).items():
            low, high = bootstrap_ci(hits, 1000, 0)
            w_low, w_high = wilson_interval(sum(hits), len(hits))
            what = "over-refused" if source == "xstest_safe" else "refused"
            print(f"  {source:12s} {what:12s} {sum(hits)}/{len(hits)} = {sum(hits) / len(hits):.3f}  "
                  f"bootstrap95 [{low:.3f}, {high:.3f}]  wilson95 [{w_low:.3f}, {w_high:.3f}]")


if __name__ == "__main__":
    main(sys.argv[1:])
