"""The tokenizer stage's verbs: the byte-level BPE tokenizer, and the token shards made with it.

  lmforge tokenizer train|show|encode|decode|export-hf ...
  lmforge tokenize --input FILE... --tokenizer DIR --out DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from lmforge.utils import LmforgeError

SPEEDRUN_GLOB = "runs/speedrun/*_tokenizer/tokenizer"


def default_tokenizer_dir() -> Path:
    """The speedrun's tokenizer (`runs/speedrun/NN_tokenizer/tokenizer`), the one that exists without flags."""
    found = sorted(Path(".").glob(SPEEDRUN_GLOB))
    if not found:
        raise LmforgeError(
            f"no --tokenizer given and no speedrun tokenizer at {SPEEDRUN_GLOB}; train one with "
            "`lmforge tokenizer train --input FILE --vocab-size 4096 --out DIR` (or run `lmforge speedrun`)"
        )
    return found[-1]


def _load(path: Path | None):
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.load(path if path is not None else default_tokenizer_dir())


def training_files(inputs: list[str]) -> list[Path]:
    """The input files (files, folders, globs), checked up front: a missing or empty file is an error naming it."""
    from lmforge.data.readers import expand_inputs

    files = expand_inputs(inputs)
    if not files:
        raise LmforgeError(f"--input: no input files found in {' '.join(inputs)}")
    for f in files:
        if f.stat().st_size == 0:
            raise LmforgeError(f"--input file {f} is empty")
    return files


def check_train_args(args: argparse.Namespace) -> list[Path]:
    """Every flag of `tokenizer train`, checked before anything is read or written; returns the input files."""
    from lmforge.tokenizer.patterns import resolve_pattern
    from lmforge.tokenizer.tokenizer import check_vocab_size

    check_vocab_size(args.vocab_size, what="--vocab-size")
    resolve_pattern(args.pattern, what="--pattern")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not 1 <= args.workers <= cores:
        raise LmforgeError(f"--workers must be from 1 to {cores} (the cores here), got {args.workers}")
    if not args.text_field:
        raise LmforgeError("--text-field must name a JSONL field, got an empty string")
    if args.out.exists() and not args.out.is_dir():
        raise LmforgeError(f"--out {args.out} is a file, not a tokenizer folder")
    return training_files(args.input)


def iter_training_texts(files: list[Path], text_field: str = "text") -> Iterator[str]:
    """Documents through the data readers: a .txt file is one document, a JSONL(.gz) line (its `text_field`) one."""
    from lmforge.data.readers import read_documents

    for doc in read_documents(files, text_field=text_field):
        yield doc.text


def cmd_train(args: argparse.Namespace) -> int:
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenizer.bpe_train import TrainStats
    from lmforge.utils import remove_stale_temporaries

    files = check_train_args(args)
    remove_stale_temporaries(args.out)  # what a killed earlier run's atomic write left
    stats = TrainStats()
    t0 = time.perf_counter()
    try:
        tok = Tokenizer.train(iter_training_texts(files, args.text_field), args.vocab_size, pattern=args.pattern,
                              num_workers=args.workers, progress=True, stats=stats)
    except LmforgeError as e:  # the flags are checked: what is left is the inputs' text (none at all)
        raise LmforgeError(f"--input: {e} ({len(files)} file(s); the text of a JSONL line is its --text-field "
                           f"{args.text_field!r})") from e
    tok.save(args.out)
    note = " (the corpus ran out of pairs first)" if stats.stopped_early else ""
    print(
        f"trained {tok} in {time.perf_counter() - t0:.1f} s on {stats.total_chunks} chunks "
        f"({stats.unique_chunks} unique){note}; saved to {args.out}"
    )
    return 0


def _read_text(args: argparse.Namespace, limit: int | None = None) -> str:
    """The text argument, `--file` or stdin; with `limit`, at most that many characters are read."""
    size = -1 if limit is None else limit
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as f:
                return f.read(size)
        except (OSError, UnicodeDecodeError) as e:
            raise LmforgeError(f"--file {args.file}: cannot read it as UTF-8 text: {e}") from e
    if args.text is None:
        return sys.stdin.read(size)
    return args.text


def cmd_show(args: argparse.Namespace) -> int:
    from rich.console import Console

    from lmforge.tokenizer.show import MAX_SHOWN_CHARS, render

    tok = _load(args.tokenizer)
    text = _read_text(args, limit=MAX_SHOWN_CHARS + 1)  # one more than shown: enough to know something was cut
    render(tok, text, Console(), allowed_special="all" if args.allow_special else ())
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    tok = _load(args.tokenizer)
    ids = tok.encode(_read_text(args), allowed_special="all" if args.allow_special else ())
    print(" ".join(map(str, ids)))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    tok = _load(args.tokenizer)
    raw = args.ids if args.ids else sys.stdin.read().split()
    try:
        ids = [int(x.strip(",[]")) for x in raw if x.strip(",[]")]
        sys.stdout.write(tok.decode(ids) + "\n")
    except ValueError as e:
        raise LmforgeError(f"ids: {e}") from e
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    if args.out.is_dir():
        raise LmforgeError(f"--out {args.out} is a folder; give the tokenizer.json file to write")
    tok = _load(args.tokenizer)
    path = tok.export_hf(args.out)
    print(f"wrote {path} (Hugging Face tokenizers ByteLevel BPE, {tok.vocab_size} ids)")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from lmforge.data.cli import unescape
    from lmforge.data.readers import expand_inputs
    from lmforge.tokenizer.encode_corpus import TokenizeConfig, tokenize_files

    cfg = TokenizeConfig(val_fraction=args.val_fraction, min_val_tokens=args.min_val_tokens,
                         text_separator=unescape(args.text_separator or ""), text_max_chars=args.text_max_chars or 0)
    files = [str(p) for p in expand_inputs(args.input)]
    stats = tokenize_files(files, args.tokenizer, args.out, cfg, workers=1 if args.workers is None else args.workers)
    print(f"{stats['train_tokens']} train + {stats['val_tokens']} validation tokens ({stats['dtype']}) in {args.out}")
    return 0


def register_tokenize(sub: argparse._SubParsersAction) -> None:
    """`lmforge tokenize`: the speedrun's stage `tokenize`, between the tokenizer and pretraining."""
    from lmforge.data.cli import TEXT_RULE, add_text_flags

    t = sub.add_parser("tokenize", help="tokenize clean documents into train/val token shards for pretraining",
                       description="Tokenize .jsonl.gz/.parquet documents (as `lmforge data run` writes them) or "
                                   "plain text into train/val token shards with index.json and a copy of the "
                                   "tokenizer (the format: lmforge/tokenizer/shards.py). " + TEXT_RULE)
    t.add_argument("--input", nargs="+", required=True, help="document files or folders")
    t.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory (lmforge tokenizer train)")
    t.add_argument("--out", type=Path, required=True, help="shards directory")
    t.add_argument("--val-fraction", type=float, default=0.01,
                   help="share of tokens held out (by a hash of the URL, else the id)")
    t.add_argument("--min-val-tokens", type=int, default=50_000, help="at least this many validation tokens")
    add_text_flags(t)
    t.add_argument("--workers", type=int, default=None)
    t.set_defaults(func=cmd_tokenize)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenizer",
        help="train, explore and export the byte-level BPE tokenizer (GPT-4 split pattern, fixed special tokens)",
        description="Byte-level BPE: UTF-8 bytes, then pairs merged by frequency until the vocabulary is full.",
    )
    verbs = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    t = verbs.add_parser(
        "train",
        help="learn merges from text files",
        description="Learn a vocabulary from files: a .txt file is one document; each line of a .jsonl/.jsonl.gz "
        "file is one document (its text field). Chunks never span two documents. Same inputs and settings give a "
        "byte-identical tokenizer file.",
    )
    t.add_argument("--input", nargs="+", required=True, metavar="FILE", help="input files, folders or globs")
    t.add_argument("--vocab-size", type=int, required=True, help="ids in total: 256 bytes + merges + 10 special tokens")
    t.add_argument("--out", type=Path, required=True, help="tokenizer directory to write")
    t.add_argument("--pattern", default="gpt4", help="split pattern: gpt4 (default), gpt2, or a regex")
    t.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    t.add_argument("--workers", type=int, default=1, help="processes that count chunks (worth it from tens of MB)")
    t.set_defaults(func=cmd_train)

    def text_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--tokenizer", type=Path, default=None, help=f"tokenizer directory (default: {SPEEDRUN_GLOB})")
        q.add_argument("text", nargs="?", default=None, help="the text (default: read stdin)")
        q.add_argument("--file", default=None, help="read the text from this UTF-8 file instead")
        q.add_argument("--allow-special", action="store_true", help="treat <|...|> special-token strings as special")

    s = verbs.add_parser("show", help="print text with each token coloured, its ids, count and bytes per token",
                         description="The explorer: where the token boundaries fall, the ids, and bytes/token.")
    text_args(s)
    s.set_defaults(func=cmd_show)

    e = verbs.add_parser("encode", help="print the token ids of a text", description="Print token ids, space separated.")
    text_args(e)
    e.set_defaults(func=cmd_encode)

    d = verbs.add_parser("decode", help="print the text of token ids", description="Decode ids (arguments or stdin).")
    d.add_argument("--tokenizer", type=Path, default=None, help=f"tokenizer directory (default: {SPEEDRUN_GLOB})")
    d.add_argument("ids", nargs="*", help="token ids (default: read stdin)")
    d.set_defaults(func=cmd_decode)

    x = verbs.add_parser("export-hf", help="write a Hugging Face tokenizer.json",
                         description="Export to a tokenizer.json that `tokenizers` and `transformers` load offline "
                         "(ByteLevel BPE with the same split regex and special tokens; identical ids).")
    x.add_argument("--tokenizer", type=Path, default=None, help=f"tokenizer directory (default: {SPEEDRUN_GLOB})")
    x.add_argument("--out", type=Path, required=True, help="the tokenizer.json file to write")
    x.set_defaults(func=cmd_export_hf)
    register_tokenize(sub)
