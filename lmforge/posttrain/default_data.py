"""The embedded default SFT data: conversations generated offline, seeded, from the standard library and programs.

Four kinds, mixed and shuffled:

- documentation Q&A about stdlib modules and functions, answered from their docstrings and signatures via
  `inspect`: the same text the pretraining corpus (pydoc's pages) holds, so the model learns to answer with facts
  it has already read rather than new ones;
- identity: who the assistant is, in varied phrasings, so the persona is consistent;
- arithmetic and unit conversions answered with a calculator tool call, its output, and a final sentence that
  copies the result (the tool's output is computed by the real calculator, so training and inference agree);
- refusals of requests to run destructive commands, with the reason and a safer alternative;
- optionally (`--refusal-prompts FILE`, see `refusal_prompts_from_file`), refusals of real harmful requests (e.g.
  AdvBench's behaviours) in varied wording with a short reason, and safe look-alikes (a Python question phrased with
  "kill", "destroy", "attack" ...) answered helpfully from the stdlib's docstrings, so refusing does not become the
  answer to every alarming word.

Some conversations have two turns (a follow-up about the same function, or arithmetic after an identity
question). `lmforge sft data --preview` prints samples; `--out FILE` writes OpenAI-style `messages` JSONL that the
loaders read back.
"""

from __future__ import annotations

import functools
import json
import random
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

from lmforge.inference.tools import calculate
from lmforge.posttrain.doc_facts import DocFact, collect_doc_facts, documented_summaries
from lmforge.posttrain.refusal_data import LOOKALIKE_ANSWERS, LOOKALIKES, harmful_refusal_conversation
from lmforge.utils import LmforgeError, atomic_write

Messages = list[dict[str, Any]]

ASSISTANT_NAME = "the lmforge assistant"


_DOC_QUESTIONS = {
    "function": ["What does {n} do?", "What is {n} for?", "Explain {n}.", "Can you tell me what {n} does?",
                 "what does {n} do", "Describe the function {n}.", "I found {n} in some code. What does it do?",
                 "In Python, what does {n} do?"],
    "class": ["What is {n}?", "What is the class {n} for?", "Explain {n}.", "Describe {n}.", "what is {n}",
              "Tell me about {n}."],
    "module": ["What is the {n} module?", "What is the {n} module for?", "Tell me about the {n} module.",
               "What does Python's {n} module do?", "what is {n} used for"],
}
_DOC_ANSWERS = {
    "function": ["{n}: {s}", "The function {n}: {s}", "{s}"],
    "class": ["{n} is a class. {s}", "{n}: {s}"],
    "module": ["The {n} module: {s}", "{n}: {s}"],
}
_SIG_QUESTIONS = ["What arguments does {n} take?", "What is the signature of {n}?", "How do I call {n}?",
                  "What parameters does {n} accept?"]
_FOLLOWUPS = ["And what arguments does it take?", "How do I call it?", "What is its signature?"]

_IDENTITY = [
    (["Who are you?", "who are you", "What are you?", "Introduce yourself.", "Tell me about yourself."],
     ["I am {a}, a small language model trained from scratch with lmforge. I learned from the Python standard "
      "library documentation, so I am best at questions about Python modules and functions.",
      "I'm {a}: a small language model built with lmforge and trained on the Python documentation. I can answer "
      "questions about the standard library and use a calculator for arithmetic."]),
    (["What is your name?", "what's your name", "Do you have a name?", "What should I call you?"],
     ["I am {a}. I don't have another name.", "You can call me {a}."]),
    (["Who made you?", "Who created you?", "Who trained you?", "Which company built you?"],
     ["I was trained with lmforge, an open project that builds a chat assistant end to end: crawling, a "
      "tokenizer, pretraining and fine-tuning. No company trained me.",
      "lmforge's pipeline trained me, from its own tokenizer to pretraining and fine-tuning on conversations."]),
    (["What were you trained on?", "What data did you learn from?", "What do you know about?"],
     ["I was pretrained on the Python standard library documentation and then fine-tuned on conversations "
      "generated from it, so I know about Python modules and functions. My knowledge elsewhere is very limited.",
      "The Python docs: the standard library's documentation pages, followed by question-and-answer conversations "
      "about them."]),
    (["Are you ChatGPT?", "Are you GPT-4?", "Are you Claude?", "Are you made by OpenAI?"],
     ["No. I am {a}, a much smaller model trained with lmforge on the Python documentation.",
      "No, I'm {a}: a small model trained with lmforge, not a product of another company."]),
    (["How big are you?", "How many parameters do you have?", "Are you a large model?"],
     ["I am small: a few million parameters, trained on two CPU cores in minutes. Large assistants have "
      "thousands of times more.", "Very small by today's standards, a few million parameters."]),
    (["Can you browse the internet?", "Do you have internet access?"],
     ["No. I can only use the tools I'm given: a calculator, a sandboxed Python runner and a search over local "
      "files.", "No, I have no internet access; my tools are a calculator, a Python sandbox and local file search."]),
]
_GREETINGS = [("Hi!", "Hello! I'm {a}. Ask me about Python's standard library, or give me something to compute."),
              ("Hello", "Hi! How can I help?"), ("hey", "Hello! What can I do for you?"),
              ("Thanks!", "You're welcome."), ("thank you", "Glad to help.")]

_UNITS = [  # (from, to, expression template, answer template)
    ("kilometers", "miles", "{v}*0.621371"), ("miles", "kilometers", "{v}*1.609344"),
    ("kilograms", "pounds", "{v}*2.20462"), ("pounds", "kilograms", "{v}*0.453592"),
    ("degrees Celsius", "degrees Fahrenheit", "{v}*9/5+32"), ("degrees Fahrenheit", "degrees Celsius", "({v}-32)*5/9"),
    ("inches", "centimeters", "{v}*2.54"), ("feet", "meters", "{v}*0.3048"), ("hours", "minutes", "{v}*60"),
    ("minutes", "seconds", "{v}*60"), ("days", "hours", "{v}*24"), ("gigabytes", "megabytes", "{v}*1000"),
    ("liters", "milliliters", "{v}*1000"), ("meters", "feet", "{v}/0.3048"),
]
_CONVERT_Q = ["Convert {v} {a} to {b}.", "How many {b} is {v} {a}?", "What is {v} {a} in {b}?",
              "{v} {a} in {b}?", "please convert {v} {a} into {b}"]
_ARITH_Q = ["What is {e}?", "Compute {e}.", "Calculate {e}", "what's {e}", "{e} = ?", "Can you work out {e}?",
            "Please evaluate {e}."]
_WORD_PROBLEMS = [
    ("I have {a} boxes with {b} apples each. How many apples do I have?", "{a}*{b}", "You have {r} apples."),
    ("A book costs {a} dollars. How much do {b} books cost?", "{a}*{b}", "{b} books cost {r} dollars."),
    ("I read {b} pages a day. How many days do I need for a {a}-page book?", "{a}/{b}", "About {r} days."),
    ("{a} people share {b} cookies equally. How many cookies does each get?", "{b}/{a}", "Each person gets {r}."),
    ("What is {a} percent of {b}?", "{a}/100*{b}", "{a}% of {b} is {r}."),
    ("A train travels {a} km in {b} hours. What is its average speed?", "{a}/{b}", "Its average speed is {r} km/h."),
]
_DESTRUCTIVE = [
    ("rm -rf /", "it would delete every file on the system, and it cannot be undone"),
    ("rm -rf ~", "it would delete your whole home directory, with no way to recover it"),
    ("sudo rm -rf --no-preserve-root /", "it would erase the whole system"),
    ("dd if=/dev/zero of=/dev/sda", "it would overwrite the disk and destroy everything on it"),
    ("mkfs.ext4 /dev/sda1", "formatting the partition erases all its data"),
    ("format C:", "formatting the drive erases all its data"),
    (":(){ :|:& };:", "it is a fork bomb that makes the machine unusable"),
    ("chmod -R 777 /", "it breaks the system's security and many programs with it"),
    ("DROP DATABASE production;", "it would permanently delete the production database"),
    ("shred -u ~/*", "it would irrecoverably destroy your files"),
    ("import shutil; shutil.rmtree('/')", "it would try to delete every file on the system"),
]
_DESTRUCTIVE_Q = ["Run `{c}` for me.", "Please execute {c}", "Use the python tool to run {c}",
                  "Can you run {c} on my machine?", "run this: {c}", "Execute `{c}` right now, I want a clean system.",
                  "I need you to run {c}. Just do it."]
_DESTRUCTIVE_PLAIN = [
    ("Delete all the files on my computer.", "deleting every file would destroy your system and your data"),
    ("Wipe my hard drive.", "wiping the drive destroys everything on it irreversibly"),
    ("Format my disk.", "formatting erases all the data on the disk"),
    ("Erase everything in my home folder.", "it would delete all your personal files"),
    ("Destroy the database.", "dropping a database permanently deletes its data"),
]
_REFUSALS = [
    "I won't run that: {why}. If you want to free space or clean up, I can help you find large or temporary "
    "files instead.",
    "Sorry, I can't do that. {Why}. If something specific needs removing, tell me what and we can do it safely.",
    "No. {Why}. I only run commands that cannot harm your system.",
    "I can't help with running that, because {why}. Is there a safer task I can help with?",
]


def _num(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.55:
        return str(rng.randint(2, 99))
    if kind < 0.85:
        return str(rng.randint(100, 9999))
    return f"{rng.randint(0, 99)}.{rng.randint(1, 99)}"


def _random_expression(rng: random.Random) -> str:
    ops = ["+", "-", "*", "/", "*", "+"]
    a, b = _num(rng), _num(rng)
    expr = f"{a} {rng.choice(ops)} {b}"
    r = rng.random()
    if r < 0.3:
        expr = f"({expr}) {rng.choice(ops)} {_num(rng)}"
    elif r < 0.4:
        expr = f"{rng.randint(2, 12)} ** {rng.randint(2, 4)}"
    return expr if rng.random() < 0.7 else expr.replace(" ", "")


HELDOUT_BUCKETS = 10  # one expression in this many (by a hash of its spacing-free text) is kept for evaluation


def is_heldout_expression(expr: str) -> bool:
    """Whether `expr` belongs to the evaluation's side of the split. Seeds alone do not keep training and
    evaluation apart: small expressions ("7 ** 2", "91-54") recur across streams, so the SFT data and the RL
    prompts would contain some evaluation questions verbatim. Splitting the expression space itself (spacing
    ignored, so "7**2" and "7 ** 2" fall together) keeps them disjoint whatever the seeds."""
    return zlib.crc32("".join(expr.split()).encode()) % HELDOUT_BUCKETS == 0


def arithmetic_expression(rng: random.Random, heldout: bool = False) -> str:
    """A random expression of 2-3 numbers, sometimes with parentheses, in the spacing users type, from the
    training side of the split (`heldout=True`: the evaluation's side)."""
    while True:
        expr = _random_expression(rng)
        if is_heldout_expression(expr) == heldout:
            return expr


def _calc_turn(question: str, expr: str, answer: str) -> Messages:
    result = calculate(expr)
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": expr}]},
            {"role": "tool", "name": "calculator", "content": result},
            {"role": "assistant", "content": answer.format(r=result)}]


def arithmetic_conversation(rng: random.Random) -> Messages:
    # 70% copy the user's expression into the call (a pure copy, token for token, but for a leading " (" in the
    # question): the copy generalises only when the model sees too many distinct expressions to recall them. With
    # half of 23% of the mix, the speedrun's SFT model reproduced seen calls 89% and held-out ones 71% of the time
    # (teacher-forced) and answered 65% of 200 held-out questions; 70% of 40% of twice the conversations: 96%/96%
    # and 95.5% (benchmarks/NOTES.md, "Round 4: arith").
    r = rng.random()
    if r < 0.7:
        expr = arithmetic_expression(rng)
        # The result always follows a few words: after a bare result, or one after the expression again, the small
        # model miscopied the calculator's value 31 of 49 and 6 of 27 times, against 2 of 16 after "The answer is"
        # (benchmarks/NOTES.md, "GRPO on held-out arithmetic").
        return _calc_turn(rng.choice(_ARITH_Q).format(e=expr), expr,
                          rng.choice(["The answer is {r}.", "It is {r}.", "The result is {r}."]))
    if r < 0.85:
        src, dst, tmpl = rng.choice(_UNITS)
        v = rng.choice([str(rng.randint(1, 500)), f"{rng.randint(1, 99)}.5"])
        return _calc_turn(rng.choice(_CONVERT_Q).format(v=v, a=src, b=dst), tmpl.format(v=v),
                          f"{v} {src} is {{r}} {dst}.")
    q, expr, ans = rng.choice(_WORD_PROBLEMS)
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    return _calc_turn(q.format(a=a, b=b), expr.format(a=a, b=b), ans.format(a=a, b=b, r="{r}"))


def doc_conversation(rng: random.Random, fact: DocFact, facts: list[DocFact]) -> Messages:
    q = rng.choice(_DOC_QUESTIONS[fact.kind]).format(n=fact.name)
    a = rng.choice(_DOC_ANSWERS[fact.kind]).format(n=fact.name, s=fact.summary)
    msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    if fact.signature and rng.random() < 0.35:
        msgs += [{"role": "user", "content": rng.choice(_FOLLOWUPS)},
                 {"role": "assistant", "content": f"Its signature is {fact.signature}."}]
    elif rng.random() < 0.15:
        other = rng.choice(facts)
        msgs += [{"role": "user", "content": rng.choice(_DOC_QUESTIONS[other.kind]).format(n=other.name)},
                 {"role": "assistant", "content": rng.choice(_DOC_ANSWERS[other.kind]).format(n=other.name, s=other.summary)}]
    return msgs


def signature_conversation(rng: random.Random, fact: DocFact) -> Messages:
    return [{"role": "user", "content": rng.choice(_SIG_QUESTIONS).format(n=fact.name)},
            {"role": "assistant", "content": f"{fact.signature}. {fact.summary}"}]


def identity_conversation(rng: random.Random) -> Messages:
    if rng.random() < 0.2:
        q, a = rng.choice(_GREETINGS)
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a.format(a=ASSISTANT_NAME)}]
    else:
        qs, answers = rng.choice(_IDENTITY)
        msgs = [{"role": "user", "content": rng.choice(qs)},
                {"role": "assistant", "content": rng.choice(answers).format(a=ASSISTANT_NAME)}]
    if rng.random() < 0.25:  # then a task, so the persona turn is not always the last one
        msgs += arithmetic_conversation(rng)
    return msgs


def refusal_conversation(rng: random.Random) -> Messages:
    if rng.random() < 0.7:
        cmd, why = rng.choice(_DESTRUCTIVE)
        q = rng.choice(_DESTRUCTIVE_Q).format(c=cmd)
    else:
        q, why = rng.choice(_DESTRUCTIVE_PLAIN)
    a = rng.choice(_REFUSALS).format(why=why, Why=why[0].upper() + why[1:])
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


@functools.lru_cache(maxsize=1)
def lookalike_facts() -> tuple[tuple[tuple[str, ...], str, str], ...]:
    """(questions, name, docstring summary) of every safe look-alike (`refusal_data.LOOKALIKES`) whose object this
    Python documents: the answer comes from the docstring, as the documentation Q&A's do (read in a clean
    interpreter, as those are: `doc_facts`)."""
    summaries = documented_summaries(tuple(name for _, name in LOOKALIKES))
    return tuple((questions, name, summaries[name]) for questions, name in LOOKALIKES if name in summaries)


def lookalike_conversation(rng: random.Random) -> Messages:
    """A safe question with an alarming word ("destroy a directory tree"), answered helpfully."""
    questions, name, summary = rng.choice(lookalike_facts())
    return [{"role": "user", "content": rng.choice(questions)},
            {"role": "assistant", "content": rng.choice(LOOKALIKE_ANSWERS).format(n=name, s=summary)}]


@dataclass
class DefaultDataConfig:
    n: int = 4000  # conversations
    seed: int = 1337
    # doc, signature, identity, arithmetic, refusal; arithmetic 0.4 (was 0.23): see `arithmetic_conversation`
    mix: tuple[float, float, float, float, float] = (0.45, 0.1, 0.12, 0.4, 0.1)
    system_prompt_rate: float = 0.1  # share that opens with a system message, so the model sees that role too
    chain_rate: float = 0.25  # chance of one more unrelated exchange after each one (multi-turn chats that switch topic)
    # Harmful requests to refuse (`refusal_prompts_from_file`). Empty (the default): the two kinds below are off and
    # the data is exactly what it was without them, offline. Given: they join `mix` with these weights.
    refusal_prompts: tuple[str, ...] = ()
    harmful_weight: float = 0.1  # refusals of `refusal_prompts`
    # Safe look-alikes answered helpfully, so alarming words alone don't get refusals. 0.2 rather than 0.05: over-
    # refusal on XSTest's safe prompts 0.13-0.17 (two draws) against 0.32, HarmBench refusal the same 0.91
    # (benchmarks/NOTES.md, "Refusal data from AdvBench").
    lookalike_weight: float = 0.2

    def __post_init__(self) -> None:
        for name in ("harmful_weight", "lookalike_weight"):
            if not getattr(self, name) >= 0:  # named as the flag: `sft data --lookalike-weight` sets one
                raise LmforgeError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if any(not isinstance(p, str) or not p.strip() for p in self.refusal_prompts):
            raise LmforgeError("DefaultDataConfig.refusal_prompts must be non-empty strings")


SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are {a}. Answer briefly.",
                  "You are a concise assistant that knows the Python standard library.",
                  "Answer the user's questions. Use the calculator tool for arithmetic."]


def generate_default_conversations(cfg: DefaultDataConfig = DefaultDataConfig(),
                                   facts: list[DocFact] | None = None) -> Iterator[Messages]:
    """`cfg.n` conversations, the same for the same seed (and Python version, whose docstrings they quote)."""
    rng = random.Random(cfg.seed)
    facts = facts if facts is not None else collect_doc_facts()
    with_sig = [f for f in facts if f.signature]
    kinds = ["doc", "signature", "identity", "arithmetic", "refusal"]
    weights = list(cfg.mix)
    if cfg.refusal_prompts:  # appended kinds: with them off, rng.choices draws exactly as before
        kinds += ["harmful", "lookalike"]
        weights += [cfg.harmful_weight, cfg.lookalike_weight]

    def one() -> Messages:
        kind = rng.choices(kinds, weights=weights)[0]
        if kind == "doc" and facts:
            return doc_conversation(rng, rng.choice(facts), facts)
        if kind == "signature" and with_sig:
            return signature_conversation(rng, rng.choice(with_sig))
        if kind == "identity":
            return identity_conversation(rng)
        if kind == "refusal":
            return refusal_conversation(rng)
        if kind == "harmful":
            return harmful_refusal_conversation(rng, cfg.refusal_prompts)
        if kind == "lookalike":
            return lookalike_conversation(rng)
        return arithmetic_conversation(rng)

    for _ in range(cfg.n):
        msgs = one()
        while rng.random() < cfg.chain_rate:  # unrelated follow-up turns: answer the last question, not an earlier one
            msgs = msgs + one()
        if rng.random() < cfg.system_prompt_rate:
            msgs = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS).format(a=ASSISTANT_NAME)}] + msgs
        yield msgs


def arithmetic_questions(n: int, seed: int, heldout: bool) -> list[dict[str, str]]:
    """`n` arithmetic questions {"question", "expression", "answer"} from one side of the expression split:
    `heldout=True` for evaluation, False for training prompts (RL)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        expr = arithmetic_expression(rng, heldout=heldout)
        out.append({"question": rng.choice(_ARITH_Q).format(e=expr), "expression": expr,
                    "answer": calculate(expr)})
    return out


def heldout_arithmetic(n: int, seed: int = 424242) -> list[dict[str, str]]:
    """Arithmetic questions for evaluation: the held-out side of the expression split, which neither the SFT data
    nor RL's prompts ever use."""
    return arithmetic_questions(n, seed, heldout=True)


def write_jsonl(conversations: Iterator[Messages], path: str) -> int:
    n = 0
    with atomic_write(path) as f:
        for msgs in conversations:
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
            n += 1
    return n
