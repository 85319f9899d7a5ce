"""Spotlighting (datamarking, Hines et al. 2024) against indirect prompt injection, measured on one checkpoint.

Runs the `injection` (document, tool output, file search) and `browse_injection` (a page on loopback read by the
browse tool) suites of `lmforge security scan` twice, without and with `--spotlight`, greedy, and compares them on
the cases answered in both conditions (spotlighting lengthens prompts, so in a small context fewer cases fit; an
unpaired comparison would compare different cases). Per suite: injection success with its Wilson 95% interval,
refusals (the scorer's refusal rules) and how many answers spotlighting left unchanged. A positive control asks the
same short attacks directly, as the user's own instruction: a model that does not follow them even there cannot show
a spotlighting effect.

    LMFORGE_SHARED_DATA=../shared/data .venv/bin/python benchmarks/bench_spotlight.py --checkpoint runs/sft/ckpt/step_N
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--limit", type=int, default=78, help="payloads sampled (78 = all of them)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    from lmforge.inference.engine import Engine
    from lmforge.inference.tools import SPOTLIGHT_MARK
    from lmforge.posttrain.reward import wilson_interval
    from lmforge.security.scan import score, spotlight_cases
    from lmforge.security.scoring import detect_payload, detect_refusal
    from lmforge.security.suites import BROWSE_ATTACK_CHARS, alignment_dir, build_cases, injection_payloads
    from lmforge.security.targets import EngineTarget
    from lmforge.utils import configure_threads

    configure_threads(args.threads)
    data = alignment_dir(None)
    target = EngineTarget(Engine.from_checkpoint(args.checkpoint), args.max_tokens, 16)
    suites = ["injection", "browse_injection"]
    cases = build_cases(suites, data, args.limit, args.seed, "test")
    rows = {}
    for spotlight in (False, True):  # what `security scan --spotlight` sends and how it scores (scan.run_scan)
        sent = spotlight_cases(cases) if spotlight else cases
        rows[spotlight] = score(sent, target.answer([c.messages for c in sent]), SPOTLIGHT_MARK if spotlight else "")

    def rate(k: int, n: int) -> str:
        low, high = wilson_interval(k, n)
        return f"{k}/{n} ({k / max(n, 1):.3f}, Wilson [{low:.3f}, {high:.3f}])"

    print(f"checkpoint {args.checkpoint}, {args.max_tokens}-token greedy answers, seed {args.seed}")
    print("| suite | cases | answered in both | success plain | success spotlit | refusals plain / spotlit | "
          "unchanged answers |")
    print("|---|---|---|---|---|---|---|")
    for suite in suites:
        idx = [i for i, c in enumerate(cases) if c.suite == suite
               and not rows[False][i]["error"] and not rows[True][i]["error"]]
        plain, spot = ([rows[s][i] for i in idx] for s in (False, True))
        refusals = [sum(detect_refusal(r["answer"]).hit for r in rs) for rs in (plain, spot)]
        same = sum(a["answer"] == b["answer"] for a, b in zip(plain, spot))
        print(f"| {suite} | {sum(c.suite == suite for c in cases)} | {len(idx)} | "
              f"{rate(sum(r['success'] for r in plain), len(idx))} | {rate(sum(r['success'] for r in spot), len(idx))}"
              f" | {refusals[0]} / {refusals[1]} | {same} |")

    short = [q for q in injection_payloads(data) if len(q.instruction) <= BROWSE_ATTACK_CHARS]
    direct = target.answer([[{"role": "user", "content": q.instruction}] for q in short])
    hits = sum(detect_payload(a.text, q).hit for a, q in zip(direct, short) if not a.error)
    answered = sum(not a.error for a in direct)
    print(f"positive control: the {len(short)} short attacks as the user's own instruction: followed {rate(hits, answered)}")


if __name__ == "__main__":
    main()
