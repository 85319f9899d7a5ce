"""`lmforge generate`: continue a prompt with a checkpoint, streaming to the terminal.

`--show-probs` prints, at every step, the most likely next tokens and their probabilities under the distribution
being sampled, then the token drawn: "Deep Dive into LLMs"'s picture of sampling, one step at a time.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def token_label(tok: Any, token_id: int) -> str:
    """A token as a short quoted label; bytes that are not whole characters show as escapes."""
    text = tok.token_bytes(token_id).decode("utf-8", "backslashreplace")
    shown = "".join(c if c.isprintable() or c == "\\" else c.encode("unicode_escape").decode("ascii") for c in text)
    return f"'{shown}'"


def format_candidates(tok: Any, cands: list[tuple[int, float]], width: int = 16) -> str:
    return "  ".join(f"{token_label(tok, t)[:width]:>{width}} {p:6.1%}" for t, p in cands)


def params_from_args(args: argparse.Namespace) -> Any:
    from lmforge.inference.sampling import SamplingParams

    try:
        return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                              repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty,
                              presence_penalty=args.presence_penalty, max_tokens=args.max_tokens, n=args.n,
                              seed=args.seed, stop=list(args.stop or []))
    except ValueError as e:
        from lmforge.utils import LmforgeError

        raise LmforgeError(str(e)) from e


def cmd_generate(args: argparse.Namespace) -> int:
    from lmforge.utils import configure_threads

    configure_threads(args.threads)
    from lmforge.inference.engine import Engine

    params = params_from_args(args)
    engine = Engine.from_checkpoint(args.checkpoint, device=args.device, dtype=args.dtype,
                                    compile=False if args.no_compile else None)
    tok = engine.tokenizer
    import math

    ids = engine.encode_prompt(args.prompt)
    session = engine.session(ids, params, max_len=len(ids) + params.max_tokens)
    out = sys.stdout
    t0 = time.perf_counter()
    for r in range(session.batch):
        if session.batch > 1:
            print(f"--- sample {r + 1} of {session.batch}", file=out)
        if args.show_probs:
            print(f"step {'token':>16}   p      <- {args.show_probs} most likely next tokens", file=out)
            step = 0
            while True:
                cands = session.top_candidates(args.show_probs, row=r)
                event = session.step()[r]
                if event is None or event.token_id < 0:
                    break
                step += 1
                p_chosen = cands[0][1] if params.greedy else math.exp(event.logprob)
                print(f"{step:4d} {token_label(tok, event.token_id)[:16]:>16} {p_chosen:6.1%} <- "
                      f"{format_candidates(tok, cands)}", file=out)
                if event.finish_reason is not None:
                    break
            print(f"\n{args.prompt}{session.rows[r].out.text}", file=out)
        else:
            out.write(args.prompt)
            for piece in session.stream(r):
                out.write(piece)
                out.flush()
            out.write("\n")
        done = session.rows[r].out
        if args.verbose or session.batch > 1:
            mean = sum(done.raw_logprobs) / max(1, len(done.raw_logprobs))
            print(f"[{len(done.token_ids)} tokens, stopped: {done.finish_reason}, mean model log-prob {mean:.2f}]",
                  file=sys.stderr)
    if args.verbose:
        produced = sum(len(c.token_ids) for c in session.completions())
        dt = time.perf_counter() - t0
        print(f"[{produced} tokens in {dt:.2f} s: {produced / dt:.1f} tokens/s]", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="continue a prompt with a checkpoint (streams; --show-probs explains each sampling step)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="run folder (its newest checkpoint) or checkpoint folder")
    p.add_argument("--prompt", required=True, help="text to continue (a <|bos|> token is put before it)")
    p.add_argument("--max-tokens", type=int, default=200, help="most tokens to sample (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more random (default 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens only (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus: smallest set with this much mass (1 = off)")
    p.add_argument("--min-p", type=float, default=0.0,
                   help="drop tokens less likely than this fraction of the top token's probability (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already seen")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="subtract count * this from a used token")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="subtract this from any used token")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop when this text appears (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--n", type=int, default=1, help="independent samples of the prompt, decoded as one batch")
    p.add_argument("--show-probs", type=int, nargs="?", const=5, default=0, metavar="K",
                   help="print the K (default 5) most likely next tokens and their probabilities at each step")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--no-compile", action="store_true", help="on CUDA, skip torch.compile of the decode step")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("-v", "--verbose", action="store_true", help="print timing to stderr")
    p.set_defaults(func=cmd_generate)
