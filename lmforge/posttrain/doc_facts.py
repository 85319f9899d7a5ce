"""Documentation facts of standard-library modules (docstring summaries and signatures), read in a clean interpreter.

The default SFT data answers questions about stdlib functions from their docstrings and signatures. Read with
`inspect` in the calling process, those facts depended on the process: modules it had imported before (torch
replaces `inspect.getfile`, so the fact list lost it and took another), mutable default values as the process left
them (`logging.shutdown(handlerList=[...])` lists the handlers other libraries configured) and the hash seed. The
same seed gave different conversations from `python -c` than from the CLI. So the facts are read here, in a fresh
interpreter that sees only the standard library with a fixed hash seed and environment
(`lmforge.data.stdlib_process`): a function of the Python installation alone.

This file runs without lmforge importable (the child process sees only the standard library); `collect_doc_facts`
and `documented_summaries` are the caller's side.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

# Modules whose pydoc pages the default crawl serves and which import without side effects.
STDLIB_MODULES = (
    "json", "os", "os.path", "re", "math", "random", "collections", "itertools", "functools", "string", "textwrap",
    "datetime", "time", "pathlib", "shutil", "glob", "fnmatch", "csv", "heapq", "bisect", "statistics", "fractions",
    "decimal", "hashlib", "base64", "binascii", "urllib.parse", "html", "difflib", "copy", "pprint", "operator",
    "enum", "dataclasses", "logging", "argparse", "struct", "zlib", "gzip", "calendar", "uuid", "secrets",
    "tempfile", "io", "contextlib", "abc", "array", "cmath", "colorsys", "keyword", "linecache", "locale",
    "numbers", "platform", "queue", "sched", "shlex", "stat", "threading", "traceback", "types", "unicodedata",
    "weakref", "zipfile", "tarfile", "inspect", "ast", "dis", "timeit", "getpass", "codecs", "filecmp", "quopri",
)


@dataclass(frozen=True)
class DocFact:
    name: str  # "json.dumps"
    kind: str  # "function" | "class" | "module"
    summary: str  # first sentence(s) of the docstring
    signature: str | None  # "json.dumps(obj, *, skipkeys=False, ...)" when inspect can tell


def docstring_summary(doc: str | None, max_chars: int = 240) -> str | None:
    """The first paragraph of a docstring, cut after whole sentences to at most max_chars."""
    if not doc:
        return None
    para = inspect.cleandoc(doc).split("\n\n")[0]
    if re.match(r"^[\w.]+\(.*\)", para) and "\n" in para:  # builtins start with their signature line: skip it
        para = para.split("\n", 1)[1]
    para = " ".join(para.split())
    if len(para) < 12 or para.lower().startswith(("deprecated", "alias", "see ")):
        return None
    sentences = re.split(r"(?<=[.!?])\s+", para)
    out = ""
    for s in sentences:
        if out and len(out) + len(s) + 1 > max_chars:
            break
        out = f"{out} {s}".strip()
    if len(out) > max_chars:
        out = out[:max_chars].rsplit(" ", 1)[0] + "..."
    return None if out.endswith(":") else out


def _signature(qualname: str, obj: Any) -> str | None:
    """The signature as inspect writes it, minus what differs between machines and runs: memory addresses in the
    reprs of default values (`<function copy2 at 0x7f...>`) and this interpreter's path (`executable=sys.executable`),
    so the same seed generates byte-identical SFT data everywhere."""
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return None
    sig = re.sub(r" at 0x[0-9a-fA-F]+", "", sig).replace(repr(sys.executable), "sys.executable")
    return f"{qualname}{sig}" if len(sig) <= 160 else None


def _read_doc_facts(modules: list[str], per_module: int) -> list[DocFact]:
    """Documented public functions and classes of the given modules, in a deterministic order (in this process)."""
    facts: list[DocFact] = []
    for modname in modules:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        if (s := docstring_summary(mod.__doc__)) is not None:
            facts.append(DocFact(modname, "module", s, None))
        count = 0
        for name in sorted(getattr(mod, "__all__", None) or dir(mod)):
            if name.startswith("_") or count >= per_module:
                continue
            obj = getattr(mod, name, None)
            if not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                continue
            owner = getattr(obj, "__module__", modname) or modname
            if owner.lstrip("_") not in (modname, modname.split(".")[-1]) and not owner.startswith(modname):
                continue  # re-exported from elsewhere: its own module documents it
            summary = docstring_summary(inspect.getdoc(obj) if inspect.isclass(obj) else obj.__doc__)
            if summary is None:
                continue
            qual = f"{modname}.{name}"
            kind = "class" if inspect.isclass(obj) else "function"
            facts.append(DocFact(qual, kind, summary, _signature(qual, obj)))
            count += 1
    return facts


def _read_summaries(names: list[str]) -> dict[str, str]:
    """name -> docstring summary of each dotted `module.attribute` name this Python documents (in this process)."""
    out = {}
    for name in names:
        module, attr = name.rsplit(".", 1)
        obj = getattr(importlib.import_module(module), attr, None)
        doc = inspect.getdoc(obj) if inspect.isclass(obj) else getattr(obj, "__doc__", None)
        summary = docstring_summary(doc) if obj is not None else None
        if summary is not None:
            out[name] = summary
    return out


@functools.lru_cache(maxsize=8)
def _ask_clean_interpreter(request: str) -> dict[str, Any]:
    """Run this file in a fresh stdlib-only interpreter on a JSON request; its JSON answer (cached per request)."""
    from lmforge.data.stdlib_process import STDLIB_CWD, STDLIB_ENV, stdlib_python
    from lmforge.utils import LmforgeError

    try:
        proc = subprocess.run(stdlib_python(__file__, request), env=STDLIB_ENV, cwd=STDLIB_CWD,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, encoding="utf-8", timeout=300)
    except subprocess.TimeoutExpired as e:
        raise LmforgeError("reading the standard library's docstrings took over 300 s (an import that hangs?)") from e
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise LmforgeError(f"reading the standard library's docstrings failed: {tail[0]}")
    return json.loads(proc.stdout)


def collect_doc_facts(modules: tuple[str, ...] = STDLIB_MODULES, per_module: int = 40) -> list[DocFact]:
    """Documented public functions and classes of the given modules, in a deterministic order, as a clean
    interpreter of this Python sees them (whatever this process has imported or patched)."""
    answer = _ask_clean_interpreter(json.dumps({"modules": list(modules), "per_module": per_module}))
    return [DocFact(**f) for f in answer["facts"]]


def documented_summaries(names: tuple[str, ...]) -> dict[str, str]:
    """name -> docstring summary of the dotted names a clean interpreter of this Python documents."""
    return dict(_ask_clean_interpreter(json.dumps({"names": list(names)}))["summaries"])


def _read_functions(modules: list[str]) -> dict[str, Any]:
    """The public functions each module defines itself (not re-exports), with their signatures, and every public
    attribute name of each module (in this process)."""
    functions, attributes = [], {}
    for modname in modules:
        try:
            module = importlib.import_module(modname)
        except ImportError:  # a platform without it: the pool is smaller, still deterministic
            continue
        attributes[modname] = sorted(n for n in vars(module) if not n.startswith("_"))
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            if getattr(obj, "__module__", None) != modname:
                continue
            try:
                signature = str(inspect.signature(obj))
            except (TypeError, ValueError):  # builtins without text signatures
                continue
            if "<" not in signature:  # defaults whose repr is an object address differ run to run
                functions.append([modname, name, signature])
    return {"functions": functions, "attributes": attributes}


def stdlib_function_table(modules: tuple[str, ...]) -> dict[str, Any]:
    """{"functions": [[module, name, signature], ...], "attributes": {module: [public names]}} as a clean
    interpreter of this Python sees them: the evaluation's stdlib tasks read the same pool in every process."""
    return _ask_clean_interpreter(json.dumps({"functions": list(modules)}))


def _main(request: dict[str, Any]) -> dict[str, Any]:
    if "names" in request:
        return {"summaries": _read_summaries(request["names"])}
    if "functions" in request:
        return _read_functions(request["functions"])
    return {"facts": [asdict(f) for f in _read_doc_facts(request["modules"], request["per_module"])]}


if __name__ == "__main__":
    answer_to = sys.stdout
    sys.stdout = sys.stderr  # a module that prints on import must not corrupt the answer
    answer_to.write(json.dumps(_main(json.loads(sys.argv[1])), ensure_ascii=True))
