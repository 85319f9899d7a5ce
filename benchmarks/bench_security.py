"""The injection/jailbreak guard against scikit-learn's TF-IDF + logistic regression: held-out balanced accuracy
(PINT's measure: attacks and hard negatives weigh equally), accuracy per group, training time and scoring latency.

Both sides learn from the same generated training texts (`guard.guard_dataset`: in-the-wild jailbreaks, system-prompt
extraction attacks and BIPIA e-mails with injected instructions as attacks; clean e-mails, XSTest's safe prompts and
benign instructions as negatives) and are scored on the same held-out side. The peer is what one would reach for
first: `TfidfVectorizer(analyzer="char", ngram_range=(4, 4))` (the guard's own features: lower-cased character
4-grams) and `LogisticRegression(class_weight="balanced")`, flagging at probability 0.5 like the guard. Timings are
interleaved (ours, peer, ours, peer ...) on the same machine in the same process, each round scoring every held-out
text; the ratio is reported per round (median, min, max), since the shared machine's load varies between rounds.

Needs the shared alignment data (LMFORGE_SHARED_DATA or ../shared/data).

    LMFORGE_SHARED_DATA=../shared/data .venv/bin/python benchmarks/bench_security.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def balanced(flags: Any, labels: list[int], groups: list[str]) -> dict[str, Any]:
    """Balanced accuracy and accuracy per group of boolean flags."""
    import numpy as np

    y = np.asarray(labels, dtype=bool)
    correct = np.asarray(flags, dtype=bool) == y
    return {"balanced_accuracy": round(float((correct[y].mean() + correct[~y].mean()) / 2), 4),
            "per_group": {g: round(float(correct[np.asarray(groups) == g].mean()), 4) for g in dict.fromkeys(groups)}}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def peer_pipeline() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(4, 4), lowercase=True),
                         LogisticRegression(class_weight="balanced", max_iter=2000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved scoring rounds")
    ap.add_argument("--epochs", type=int, default=60, help="the guard's training steps (its CLI default)")
    args = ap.parse_args()

    from lmforge.security.guard import Guard, guard_dataset
    from lmforge.security.suites import alignment_dir

    data = alignment_dir(None)
    (train_x, train_y, _), (test_x, test_y, test_g) = guard_dataset(data, test=False), guard_dataset(data, test=True)
    ours_train_s, guard = timed(lambda: Guard.train(train_x, train_y, epochs=args.epochs))
    peer_train_s, peer = timed(lambda: peer_pipeline().fit(train_x, train_y))
    results: dict[str, Any] = {
        "train_texts": len(train_x), "heldout_texts": len(test_x),
        "ours": {"train_s": round(ours_train_s, 3), **balanced(guard.flags(test_x), test_y, test_g)},
        "peer": {"train_s": round(peer_train_s, 3), **balanced(peer.predict_proba(test_x)[:, 1] > 0.5, test_y, test_g)}}
    ratios, ours_ms, peer_ms = [], [], []
    for _ in range(args.rounds):  # interleaved: ours, then the peer, each scoring every held-out text
        a, _ = timed(lambda: guard.score(test_x))
        b, _ = timed(lambda: peer.predict_proba(test_x))
        ours_ms.append(1000 * a / len(test_x))
        peer_ms.append(1000 * b / len(test_x))
        ratios.append(b / a)
    results["ours"]["latency_ms_per_text"] = round(statistics.median(ours_ms), 4)
    results["peer"]["latency_ms_per_text"] = round(statistics.median(peer_ms), 4)
    results["peer_over_ours_latency"] = {"median": round(statistics.median(ratios), 3),
                                         "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
    results["balanced_accuracy_ours_minus_peer"] = round(
        results["ours"]["balanced_accuracy"] - results["peer"]["balanced_accuracy"], 4)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
