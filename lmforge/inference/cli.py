"""The inference verbs: `lmforge generate` continues a prompt with a checkpoint, streaming to the terminal;
`lmforge chat` is a terminal chat with a fine-tuned checkpoint and its tools (`chat.ChatSession` does the work).

`--show-probs` prints, at every step, the most likely next tokens and their probabilities under the distribution
being sampled, then the token drawn: "Deep Dive into LLMs"'s picture of sampling, one step at a time.

The sampling flags are the fields of `SamplingParams` (and of `ChatConfig`, which builds one) under their flag
names (`top_p` is `--top-p`): the dataclass checks the values, in one place, and `from_flags` names the flag.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator, TypeVar

from lmforge.utils import LmforgeError

T = TypeVar("T")


def token_label(tok: Any, token_id: int) -> str:
    """A token as a short quoted label; bytes that are not whole characters show as escapes."""
    text = tok.token_bytes(token_id).decode("utf-8", "backslashreplace")
    shown = "".join(c if c.isprintable() or c == "\\" else c.encode("unicode_escape").decode("ascii") for c in text)
    return f"'{shown}'"


def format_candidates(tok: Any, cands: list[tuple[int, float]], width: int = 16) -> str:
    return "  ".join(f"{token_label(tok, t)[:width]:>{width}} {p:6.1%}" for t, p in cands)


def probability_header(k: int) -> str:
    return f"step {'token':>16}   p      <- {k} most likely next tokens"


def probability_steps(session: Any, tok: Any, params: Any, k: int,
                      row: int = 0) -> Iterator[tuple[str, Any, float, list[tuple[int, float]]]]:
    """Step a session (sampling with `params`) and yield, for each token one row draws: its line of the probability
    table, the step event, the probability of the token drawn under the distribution sampled (greedy: the top
    one's), and the k most likely candidates. Used by `generate --show-probs` and the speedrun's sample stage."""
    step = 0
    while True:
        cands = session.top_candidates(k, row=row)
        event = session.step()[row]
        if event is None or event.token_id < 0:
            return
        step += 1
        p = cands[0][1] if params.greedy else math.exp(event.logprob)
        label = token_label(tok, event.token_id)[:16]
        yield f"{step:4d} {label:>16} {p:6.1%} <- {format_candidates(tok, cands)}", event, p, cands
        if event.finish_reason is not None:
            return


def flag(field: str) -> str:
    """The command-line spelling of a config field: `top_p` -> `--top-p`."""
    return "--" + field.replace("_", "-")


def from_flags(cls: type[T], values: dict[str, Any]) -> T:
    """`cls(**values)` for a config dataclass whose fields are a verb's flags; a refusal names the flag(s).

    The dataclass validates (one place, shared with every caller of the API); to name the culprit, each value is
    tried alone over the dataclass's defaults, and those it refuses alone are the flags named. A refusal of a
    combination only (each value fine alone) keeps the dataclass's own message, which names its fields.
    """

    def refused(name: str, value: Any) -> bool:
        try:
            cls(**{name: value})
        except (LmforgeError, ValueError):
            return True
        return False

    try:
        return cls(**values)
    except (LmforgeError, ValueError) as e:
        culprits = [f"{flag(name)} {value!r}" for name, value in values.items() if refused(name, value)]
        raise LmforgeError(f"{', '.join(culprits)}: {e}" if culprits else str(e)) from e


def sampling_params_from_args(args: argparse.Namespace) -> Any:
    from lmforge.inference.sampling import SamplingParams

    names = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty",
             "max_tokens", "n", "seed")
    return from_flags(SamplingParams, {**{name: getattr(args, name) for name in names}, "stop": list(args.stop or [])})


def cmd_generate(args: argparse.Namespace) -> int:
    from lmforge.utils import configure_threads, resolve_device

    device = resolve_device(args.device)
    params = sampling_params_from_args(args)
    if args.show_probs < 0:
        raise LmforgeError(f"--show-probs {args.show_probs}: the number of tokens shown must be 0 or more")
    configure_threads(args.threads)
    from lmforge.inference.engine import Engine

    engine = Engine.from_checkpoint(args.checkpoint, device=device, dtype=args.dtype,
                                    compile=False if args.no_compile else None)
    ids = engine.encode_prompt(args.prompt)
    session = engine.session(ids, params, max_len=len(ids) + params.max_tokens)
    out = sys.stdout
    t0 = time.perf_counter()
    for r in range(session.batch):
        if session.batch > 1:
            print(f"--- sample {r + 1} of {session.batch}", file=out)
        if args.show_probs:
            print(probability_header(args.show_probs), file=out)
            for line, *_ in probability_steps(session, engine.tokenizer, params, args.show_probs, row=r):
                print(line, file=out)
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


def _print_event(e: Any) -> None:
    if e.kind == "text":
        print(e.text, end="", flush=True)
    elif e.kind == "tool_call":
        print(f"\n  [{e.name}] {e.text}", flush=True)
    elif e.kind == "notice":
        print(f"[{e.text}]", flush=True)
    else:
        print(f"  [{e.name} output] {e.text}", flush=True)


CHAT_HELP = "commands: /reset (forget the conversation), /save FILE (write it as JSON), /quit"


def cmd_chat(args: argparse.Namespace) -> int:
    from lmforge.inference.chat import ChatConfig, ChatSession
    from lmforge.inference.engine import Engine
    from lmforge.inference.tools import default_tools
    from lmforge.utils import configure_threads, resolve_device
    from lmforge.inference.browse import Browser

    device = resolve_device(args.device)
    cfg = from_flags(ChatConfig, {name: getattr(args, name) for name in ("temperature", "top_k", "top_p",
                                                                         "max_tokens", "seed", "spotlight")})
    browser = Browser.allowing(args.browse_allow)
    configure_threads(args.threads)
    engine = Engine.from_checkpoint(str(args.checkpoint), device=device)
    tools = {} if args.no_tools else default_tools(search_dir=args.search_dir, unsafe_python=args.unsafe_python,
                                                   browser=browser)
    chat = ChatSession(engine, tools, system=args.system, config=cfg)
    print(f"lmforge chat: {args.checkpoint} | tools: {', '.join(tools) or 'none'} | {CHAT_HELP}")
    while True:
        try:
            line = input("\nyou> ")
        except EOFError:
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            chat.reset()
            print("(conversation cleared)")
            continue
        if text.startswith("/save"):
            target = text[len("/save"):].strip()
            if not target:
                print("usage: /save FILE")
                continue
            chat.save(target)
            print(f"(saved {len(chat.messages)} messages to {target})")
            continue
        if text.startswith("/"):
            print(CHAT_HELP)
            continue
        print("assistant> ", end="", flush=True)
        try:
            turn = chat.respond(text, on_event=_print_event)
        except LmforgeError as e:
            print(f"\n(error: {e})")
            continue
        if turn["finish_reason"] != "end":
            print(f"  ({turn['finish_reason']})", end="")
        print()


def register(sub: argparse._SubParsersAction) -> None:
    register_generate(sub)
    register_chat(sub)


def register_generate(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--device", default="auto", help="auto (CUDA when visible, else cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--no-compile", action="store_true", help="on CUDA, skip torch.compile of the decode step")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("-v", "--verbose", action="store_true", help="print timing to stderr")
    p.set_defaults(func=cmd_generate)


def register_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a fine-tuned checkpoint in the terminal (streaming, tools)",
                       description="Terminal chat with streaming, history, a system prompt and tools (calculator, "
                       "sandboxed Python, search over --search-dir, browse of allowed hosts). " + CHAT_HELP)
    p.add_argument("--checkpoint", type=Path, required=True, help="SFT run folder or checkpoint folder")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--search-dir", type=Path, default=None, help="folder of text files the search tool reads")
    p.add_argument("--no-tools", action="store_true", help="do not run tools (calls get an error output)")
    p.add_argument("--browse-allow", action="append", metavar="HOST", default=None,
                   help="a host the browse tool may read besides this machine (127.0.0.1, localhost); repeatable")
    p.add_argument("--spotlight", action="store_true",
                   help="datamark tool outputs (spaces become ^) and tell the model marked text is only data")
    p.add_argument("--unsafe-python", action="store_true",
                   help="where no OS jail (bubblewrap) can be made, run the model's Python code without one")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=200, help="token budget per generated segment")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto (CUDA when visible, else cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_chat)
