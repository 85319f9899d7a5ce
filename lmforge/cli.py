"""The `lmforge` command: one verb per pipeline stage.

Each stage package owns its verbs in its own `cli.py` (a `register(subparsers)` function); this file only lists
them in pipeline order, so `lmforge --help` reads like the pipeline itself. Stage modules import torch and other
heavy libraries inside their command functions, which keeps `--help` instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Pipeline order: data -> tokenizer -> model -> pretraining -> inference -> post-training -> evaluation -> export ->
# serve -> security -> speedrun.
# Every module listed has a `register(subparsers)` function that adds its verb(s).
STAGE_CLIS = [
    "lmforge.data.cli",
    "lmforge.tokenizer.cli",
    "lmforge.train.cli",
    "lmforge.inference.cli",
    "lmforge.posttrain.cli",
    "lmforge.evaluation.cli",
    "lmforge.export.cli",
    "lmforge.serve.cli",
    "lmforge.serve.label.cli",
    "lmforge.security.cli",
    "lmforge.speedrun.cli",
]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: `lmforge VERB: error: ...` naming the flag, exit code 2 (argparse's own
    code), without the usage block that would bury the culprit. Subcommand parsers inherit the class."""

    def __init__(self, *args, **kwargs) -> None:
        # No abbreviated flags: with generated flags a prefix like --n matches several (--num-samples, --no-*), and
        # a flag added later would silently change what an abbreviation in someone's script means.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lmforge",
        description="Build a ChatGPT-like assistant end to end: crawl -> data -> tokenizer -> pretrain -> "
        "generate -> sft -> preferences (reward model, RL, DPO) -> eval -> export -> serve -> security. Run "
        "`lmforge speedrun --out DIR` for the whole chain on the embedded default.",
    )
    sub = parser.add_subparsers(dest="command", metavar="VERB", required=True)
    for name in STAGE_CLIS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before anything imports torch; see utils.configure_threads
    from lmforge.utils import LmforgeError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except LmforgeError as e:
        print(f"lmforge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # A path the user named is of the wrong kind or unreadable (an --out that is a file, a folder given as a
        # file, no permission): the OS names the file, so say that in one line rather than a traceback.
        if e.filename is None:
            raise
        print(f"lmforge {args.command}: error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmforge {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
