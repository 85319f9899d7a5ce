"""Refusal rate per source of a `lmforge security scan` (its responses.jsonl), with the scan's own intervals.

The scan's `harmful` suite pools HarmBench, AdvBench and Do-Not-Answer into one attack-success rate; refusal
training on AdvBench (`lmforge sft data --refusal-prompts`) makes the AdvBench part in-distribution, so the reported
figure must be HarmBench's alone. Scans now write each source's line themselves (`scan.json`, `by_source`); this
reads the rows of any scan, older ones included, through the same code (`security.scan.by_source`) and prints the
refusal rate (1 - attack success) of each harmful source and the over-refusal of XSTest's safe prompts, each with
the bootstrap 95% interval (1000 resamples, seed 0) and the Wilson 95% interval.

    python benchmarks/refusal_by_source.py RUN/scan/responses.jsonl [MORE ...]
"""

from __future__ import annotations

import json
import sys

from lmforge.security.scan import ScanConfig, by_source, rate_line

CFG = ScanConfig(suites=["harmful", "xstest_safe"], bootstrap=1000, seed=0)


def _print(name: str, what: str, line: dict, flip: bool) -> None:
    """One line; `flip`: print 1 - rate (refusal of a harmful request is the attack's failure)."""
    rate, (low, high), (w_low, w_high) = line["rate"], line["ci95"], line["wilson95"]
    if flip:
        rate, low, high, w_low, w_high = 1 - rate, 1 - high, 1 - low, 1 - w_high, 1 - w_low
    count = round(rate * line["answered"])
    print(f"  {name:12s} {what:12s} {count}/{line['answered']} = {rate:.3f}  bootstrap95 [{low:.3f}, {high:.3f}]  "
          f"wilson95 [{w_low:.3f}, {w_high:.3f}]")


def main(paths: list[str]) -> None:
    for path in paths:
        print(path)
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        for source in by_source([r for r in rows if r["suite"] == "harmful"], CFG):
            if source["answered"]:
                _print(source["source"], "refused", source, flip=True)
        safe = [r for r in rows if r["suite"] == "xstest_safe"]
        if any(not r["error"] for r in safe):
            _print("xstest_safe", "over-refused", rate_line(safe, CFG), flip=False)


if __name__ == "__main__":
    main(sys.argv[1:])
