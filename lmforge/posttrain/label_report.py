"""What a label store says: per-annotator quality (`lmforge label report`), the pairs it yields (`lmforge label
export`), and offline labeling by a simulated labeler through the same store (`lmforge label --simulate`).

Quality, per annotator: agreement with themselves on repeated items (their first verdict against each later one),
agreement with the known answer on gold items, the share of A/B choices that picked the left response (a careful
annotator sits near 50%, since the order is random), and Cohen's kappa between every two annotators on the pairs
both judged: kappa = (p_o - p_e) / (1 - p_e), with p_o the share of agreeing verdicts and p_e the agreement two
annotators with the same verdict frequencies would reach by chance.

Export: each annotator's first verdict on each pair counts once (a repeat measures consistency, it is not more
evidence); the majority of the votes decides; ties, both-bad and split votes are left out and counted.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from typing import Any

from lmforge.posttrain.label_store import LabelStore, pair_verdicts
from lmforge.posttrain.preferences import PreferencePair, write_pairs
from lmforge.posttrain.simulate import BOTH_BAD, FIRST, SECOND, TIE, SimulatedLabeler

Key = tuple[int, int, int]  # (prompt item, lower sample, higher sample)


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two annotators' verdicts on the same items (None when chance agreement is 1: undefined)."""
    if len(a) != len(b) or not a:
        raise ValueError("kappa needs two equally long, non-empty lists of verdicts")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    chance = sum(ca[c] * cb[c] for c in set(ca) | set(cb)) / (n * n)
    return None if chance == 1 else (observed - chance) / (1 - chance)


def _verdict_rows(store: LabelStore) -> list[dict[str, Any]]:
    """Every pair verdict of every judgement, oldest first: annotator, key, verdict, kind, gold, left choice."""
    rows = store.db.execute("SELECT j.*, i.prompt_item, i.responses, i.gold FROM judgements j JOIN items i "
                            "ON i.id = j.item ORDER BY j.id").fetchall()
    out = []
    for row in rows:
        responses = json.loads(row["responses"])
        for i, j, verdict in pair_verdicts(row, responses):
            out.append({"annotator": row["annotator"], "key": (row["prompt_item"], i, j), "verdict": verdict,
                        "kind": row["kind"], "gold": row["gold"], "choice": row["choice"]})
    return out


def _first_verdicts(verdicts: list[dict[str, Any]]) -> dict[str, dict[Key, str]]:
    first: dict[str, dict[Key, str]] = defaultdict(dict)
    for v in verdicts:
        first[v["annotator"]].setdefault(v["key"], v["verdict"])
    return first


def _share(hits: int, n: int) -> float | None:
    return None if n == 0 else hits / n


def report(store: LabelStore) -> dict[str, Any]:
    """Per-annotator agreement (repeats, gold), left share, and kappa between annotators; see the module doc."""
    verdicts = _verdict_rows(store)
    first = _first_verdicts(verdicts)
    people: dict[str, dict[str, Any]] = {}
    for name in sorted(first):
        mine = [v for v in verdicts if v["annotator"] == name]
        repeats = [v for v in mine if v["kind"] == "repeat"]
        gold = [v for v in mine if v["gold"] is not None and v["kind"] != "repeat"]
        ab = [v for v in mine if v["choice"] in ("a", "b")]
        rep_hits = sum(v["verdict"] == first[name][v["key"]] for v in repeats)
        gold_hits = sum(v["verdict"] == v["gold"] for v in gold)
        people[name] = {"judgements": len(mine), "pairs": len(first[name]),
                        "repeat_agreement": _share(rep_hits, len(repeats)), "repeats": len(repeats),
                        "gold_agreement": _share(gold_hits, len(gold)), "gold": len(gold),
                        "left_share": _share(sum(v["choice"] == "a" for v in ab), len(ab)), "ab_choices": len(ab)}
    kappas = []
    for x, y in itertools.combinations(sorted(first), 2):
        common = sorted(set(first[x]) & set(first[y]))
        if common:
            kappa = cohen_kappa([first[x][k] for k in common], [first[y][k] for k in common])
            kappas.append({"annotators": [x, y], "pairs": len(common), "kappa": kappa})
    return {"annotators": people, "kappa": kappas}


def format_report(rep: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "  n/a" if x is None else f"{100 * x:4.0f}%"

    lines = [f"{'annotator':<20} {'pairs':>6} {'repeat agr':>15} {'gold agr':>15} {'left share':>15}"]
    for name, p in rep["annotators"].items():
        cells = [f"{pct(p[share]):>9} ({p[count]:>3})" for share, count in
                 (("repeat_agreement", "repeats"), ("gold_agreement", "gold"), ("left_share", "ab_choices"))]
        lines.append(f"{name[:20]:<20} {p['pairs']:>6} " + " ".join(cells))
    for k in rep["kappa"]:
        value = "undefined" if k["kappa"] is None else f"{k['kappa']:.3f}"
        lines.append(f"kappa {k['annotators'][0]} vs {k['annotators'][1]}: {value} on {k['pairs']} pairs")
    return "\n".join(lines)


def export_pairs(store: LabelStore, path: str, source: str = "") -> dict[str, int]:
    """Write the decided pairs as preference JSONL (majority of each annotator's first verdict); return counts."""
    votes: dict[Key, list[tuple[str, str]]] = defaultdict(list)
    for name, verdicts in _first_verdicts(_verdict_rows(store)).items():
        for key, verdict in verdicts.items():
            votes[key].append((name, verdict))
    counts = Counter()
    pairs = []
    for key in sorted(votes):
        tally = Counter(v for _, v in votes[key])
        (top, n), *rest = tally.most_common()
        if rest and rest[0][1] == n:
            counts["split"] += 1
            continue
        if top in (TIE, BOTH_BAD):
            counts[top] += 1
            continue
        prompt_item, i, j = key
        record = store.samples[prompt_item]
        win, lose = (record["responses"][i], record["responses"][j]) if top == FIRST else \
            (record["responses"][j], record["responses"][i])
        meta = {"samples": source, "item": prompt_item, "chosen_sample": win["sample"],
                "rejected_sample": lose["sample"], "batch": record["batch"], "seed": record["seed"],
                "kind": record.get("kind"), "votes": dict(tally), "annotators": sorted(a for a, _ in votes[key])}
        pairs.append(PreferencePair(record["prompt"], win["text"], lose["text"], win["token_ids"], lose["token_ids"],
                                    meta))
        counts["pairs"] += 1
    if not pairs:
        from lmforge.utils import LmforgeError

        raise LmforgeError(f"no decided pair to export ({dict(counts) or 'no judgements yet'}); label some first")
    write_pairs(pairs, path)
    return {"pairs": counts["pairs"], "tie": counts[TIE], "both_bad": counts[BOTH_BAD], "split": counts["split"]}


def simulate_labeling(store: LabelStore, labeler: SimulatedLabeler, annotator: str, limit: int | None = None) -> int:
    """Label through the store as `annotator` would in the browser, until nothing is left (or `limit`)."""
    done = 0
    while limit is None or done < limit:
        item = store.next_item(annotator)
        if item is None:
            break
        record = store.samples[store.prompt_item(item["item"])]
        shown = item["shown"]
        if item["mode"] == "rank":  # order by wins against the others (the rules are not always transitive)
            wins = {s: sum(labeler.verdict(record, *sorted((s, o))) == (FIRST if s < o else SECOND)
                           for o in shown if o != s) for s in shown}
            store.record(annotator, item["item"], shown, "rank", "", sorted(shown, key=lambda s: (-wins[s], s)))
        else:
            lo, hi = sorted(shown)
            verdict = labeler.verdict(record, lo, hi)
            winner = lo if verdict == FIRST else hi if verdict == SECOND else None
            choice = {TIE: "tie", BOTH_BAD: "both_bad"}.get(verdict) or ("a" if winner == shown[0] else "b")
            store.record(annotator, item["item"], shown, choice, f"simulated:{labeler.name}")
        done += 1
    return done
