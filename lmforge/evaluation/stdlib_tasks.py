"""Multiple-choice tasks generated from the running Python's standard library, the project's own corpus.

The default corpus is the standard library's pydoc site, so a model trained on it can learn these facts; the tasks
give `lmforge eval mc` something real to climb without downloading a benchmark. Facts are read with `inspect`
in a clean interpreter of the Python that runs the evaluation (the version the corpus was crawled from, in the
speedrun), so what this process imported does not change them, and the sampling is deterministic for a seed.

  stdlib_signature: "json.dumps" -> which parameter list is its signature? The answer is the function's own
      `inspect.signature`, the distractors the signatures of other functions of the pool (all different).
  stdlib_module: "Help on function copy2 in module" -> which module? (pydoc's own heading for a function page.)
      The distractors are modules of the pool that have no attribute of that name.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lmforge.evaluation.multiple_choice import MCItem
from lmforge.posttrain.doc_facts import stdlib_function_table
from lmforge.utils import LmforgeError

# Documented, pure-Python-or-builtin modules of the standard library present on every platform.
MODULES = ("json", "shutil", "textwrap", "string", "re", "glob", "fnmatch", "base64", "heapq", "bisect",
           "difflib", "csv", "html", "statistics", "copy", "pprint", "tempfile", "gzip", "random", "functools",
           "itertools", "operator", "urllib.parse", "inspect", "calendar", "keyword", "shlex", "zipfile", "tarfile",
           "secrets", "uuid", "colorsys", "linecache", "token", "warnings", "weakref", "locale", "codecs")
TASKS = ("stdlib_signature", "stdlib_module")


@dataclass(frozen=True)
class StdlibFunction:
    module: str
    name: str
    signature: str


def stdlib_functions() -> tuple[list[StdlibFunction], dict[str, set[str]]]:
    """Public functions defined in the modules of MODULES (not re-exports), with a readable signature, sorted; and
    each module's public attribute names. Read in a clean interpreter: what this process imported or patched
    (torch replaces `inspect.getfile`) must not change the task set."""
    table = stdlib_function_table(MODULES)
    pool = [StdlibFunction(*row) for row in table["functions"]]
    return pool, {module: set(names) for module, names in table["attributes"].items()}


def signature_items(pool: list[StdlibFunction], rng: random.Random, count: int, choices: int) -> list[MCItem]:
    items = []
    for fn in rng.sample(pool, min(count, len(pool))):
        others = sorted({f.signature for f in pool if f.signature != fn.signature})
        options = [fn.signature, *rng.sample(others, choices - 1)]
        rng.shuffle(options)
        items.append(MCItem("stdlib_signature", f"{fn.module}.{fn.name}", options, options.index(fn.signature)))
    return items


def module_items(pool: list[StdlibFunction], attributes: dict[str, set[str]], rng: random.Random, count: int,
                 choices: int) -> list[MCItem]:
    modules = sorted({f.module for f in pool})
    items = []
    for fn in rng.sample(pool, min(count, len(pool))):
        others = [m for m in modules if m != fn.module and fn.name not in attributes[m]]
        options = [fn.module, *rng.sample(others, choices - 1)]
        rng.shuffle(options)
        items.append(MCItem("stdlib_module", f"Help on function {fn.name} in module",
                            [" " + o for o in options], options.index(fn.module)))
    return items


def stdlib_items(tasks: list[str] | tuple[str, ...] = TASKS, count: int = 200, seed: int = 0,
                 choices: int = 4) -> list[MCItem]:
    """`count` items of each task named, the same for a seed (and Python version)."""
    pool, attributes = stdlib_functions()
    makers = {"stdlib_signature": lambda rng: signature_items(pool, rng, count, choices),
              "stdlib_module": lambda rng: module_items(pool, attributes, rng, count, choices)}
    items = []
    for task in tasks:
        if task not in makers:
            raise LmforgeError(f"--builtin {task!r}: choose from {', '.join(TASKS)}")
        items += makers[task](random.Random(f"{seed}:{task}"))
    return items
