"""`lmforge label`: compare a sample folder's responses, in a browser or by a simulated labeler, and read the result.

    lmforge label --pairs runs/samples                          # serve the page on 127.0.0.1:8765
    lmforge label --pairs runs/samples --mode rank --port 9000  # order all K responses instead
    lmforge label --pairs runs/samples --simulate default --noise 0.1 --seed 3   # offline, same store
    lmforge label report --pairs runs/samples                   # agreement, gold, kappa, left share
    lmforge label export --pairs runs/samples --out pairs.jsonl # {prompt, chosen, rejected} for reward/DPO

The judgements live in `labels.sqlite` inside the sample folder (or --db). The verb lives in the serving package,
not post-training, because it serves the page; report and export only read the store.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DB_FILE = "labels.sqlite"


def _store(args: argparse.Namespace, must_exist: bool = False):
    """The store of --pairs. Report and export only read one: they refuse to create it and take its mode."""
    from lmforge.posttrain.compare import load_samples
    from lmforge.posttrain.label_store import LabelStore, StoreConfig, stored_mode
    from lmforge.utils import LmforgeError

    samples = load_samples(args.pairs)
    db = args.db or Path(args.pairs) / DB_FILE
    if not must_exist:
        cfg = StoreConfig(mode=args.mode, votes=args.votes, repeat_rate=args.repeat_rate, gold_rate=args.gold_rate,
                          seed=args.store_seed)
    elif not Path(db).is_file():
        raise LmforgeError(f"no judgements yet: {db} does not exist (label with `lmforge label --pairs {args.pairs}`)")
    else:
        cfg = StoreConfig(mode=stored_mode(db))
    return LabelStore(samples, db, cfg, source=str(args.pairs), read_only=must_exist)


def _cmd_label(args: argparse.Namespace) -> int:
    from lmforge.utils import LmforgeError

    if args.pairs is None:
        raise LmforgeError("lmforge label needs --pairs DIR (a sample folder from `lmforge rlhf sample`)")
    if args.limit is not None and args.limit < 1:
        raise LmforgeError(f"--limit must be >= 1 (got {args.limit})")
    if args.simulate is None:
        from lmforge.serve.label.app import check_port, serve

        check_port(args.port)
        with _store(args) as store:
            serve(store, args.port, annotator=args.annotator)
        return 0
    from lmforge.posttrain.label_report import simulate_labeling
    from lmforge.posttrain.simulate import SimulatedLabeler

    labeler = SimulatedLabeler(args.simulate, args.noise, args.seed)  # checked before the store is touched
    name = args.annotator or f"sim-{args.simulate}-{args.seed}"
    with _store(args) as store:
        n = simulate_labeling(store, labeler, name, limit=args.limit)
        print(f"{name}: {n} judgements; progress {store.progress(name)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from lmforge.posttrain.label_report import format_report, report

    with _store(args, must_exist=True) as store:
        rep = report(store)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from lmforge.posttrain.label_report import export_pairs

    with _store(args, must_exist=True) as store:
        counts = export_pairs(store, str(args.out), source=str(args.pairs))
    print(f"wrote {counts['pairs']} pairs to {args.out}; left out: {counts['tie']} ties, {counts['both_bad']} "
          f"both bad, {counts['split']} split votes")
    return 0


def _store_flags(p: argparse.ArgumentParser, assignment: bool) -> None:
    """--pairs and --db; with `assignment`, the flags that decide what each annotator is shown."""
    p.add_argument("--pairs", type=Path, required=not assignment, metavar="DIR",
                   help="sample folder (lmforge rlhf sample)")
    p.add_argument("--db", type=Path, default=None, help=f"judgement store (default: DIR/{DB_FILE})")
    if not assignment:
        return
    p.add_argument("--mode", choices=["pair", "rank"], default="pair",
                   help="pair: A/B/tie/both bad on two responses; rank: order all K (default: pair)")
    p.add_argument("--votes", type=int, default=1, help="annotators wanted per item (default: 1)")
    p.add_argument("--repeat-rate", type=float, default=0.1, help="share of repeated items (default: 0.1)")
    p.add_argument("--gold-rate", type=float, default=0.2, help="share of gold items (default: 0.2)")
    p.add_argument("--store-seed", type=int, default=0, help="order of items and of the responses shown")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="label comparisons: a page for people, simulated labelers, report, export",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _store_flags(p, assignment=True)  # --pairs not required here: `label report --pairs DIR` gives it after the verb
    p.add_argument("--annotator", default=None,
                   help="the page: fills in this name (the link printed carries it); --simulate: the name recorded")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default: 8765)")
    p.add_argument("--simulate", default=None, metavar="NAME",
                   help="label offline with a simulated labeler: default, refusal, arithmetic, stop, topic")
    p.add_argument("--noise", type=float, default=0.0, help="simulated labeler: chance of flipping a verdict")
    p.add_argument("--seed", type=int, default=0, help="simulated labeler's seed")
    p.add_argument("--limit", type=int, default=None, help="simulated labeler: at most this many judgements")
    p.set_defaults(func=_cmd_label)
    verbs = p.add_subparsers(dest="label_verb", metavar="report|export", required=False)
    r = verbs.add_parser("report", help="per-annotator agreement (repeats, gold), kappa, position bias")
    _store_flags(r, assignment=False)
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.set_defaults(func=_cmd_report)
    e = verbs.add_parser("export", help="write {prompt, chosen, rejected} JSONL (ties and both-bad left out)")
    _store_flags(e, assignment=False)
    e.add_argument("--out", type=Path, required=True, help="preference pairs JSONL to write")
    e.set_defaults(func=_cmd_export)
