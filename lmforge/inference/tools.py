"""The assistant's tools: a calculator, a sandboxed Python runner and a read-only search over text files.

A tool takes the argument text of a call (see `lmforge.tokenizer.chat_format`: `<|tool_call|>NAME\\nARGS
<|tool_call_end|>`) and returns the text the model reads inside `<|tool_output|>...<|tool_output_end|>`. Every
failure, from a syntax error to a killed process, comes back as text starting with "error:" so the model sees it
and the chat goes on: `run_tool` never raises.

Security model. The calculator never calls `eval`: it walks Python's `ast` over a whitelist of arithmetic node
types and bounds the size of every intermediate number. The Python runner runs model-written code in a separate
process with CPU-time, address-space, file-size and wall-clock limits, an emptied environment, a throw-away working
directory, and no network (a fresh network namespace via `unshare -rn` where the kernel allows it, and in every case
an audit hook that refuses sockets). The same audit hook refuses writes, renames and deletions outside the working
directory, and refuses starting processes and loading native code through ctypes. Audit hooks are defence in depth
on top of the OS limits, not a jail: run untrusted code for other people inside a container or VM.
"""

from __future__ import annotations

import ast
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

# ---------------------------------------------------------------------------------------------------------------
# Calculator
# ---------------------------------------------------------------------------------------------------------------


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate; its message is what the model reads."""


@dataclass(frozen=True)
class CalculatorLimits:
    max_chars: int = 256  # longer input is refused before parsing (the parser's own cost grows with it)
    max_int_bits: int = 4096  # every intermediate integer stays below 2**4096 (about 1,233 digits)
    max_depth: int = 50  # nesting of the expression tree


_BINOPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a ** b,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {"sqrt": math.sqrt, "abs": abs, "round": round}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_SYMBOLS = str.maketrans({"×": "*", "÷": "/", "−": "-"})


def _check_size(x: float, limits: CalculatorLimits) -> float:
    if isinstance(x, int) and x.bit_length() > limits.max_int_bits:
        raise CalculatorError("result too large")
    if isinstance(x, float) and not math.isfinite(x):
        raise CalculatorError("result too large")
    return x


def _eval(node: ast.AST, limits: CalculatorLimits, depth: int = 0) -> float:
    if depth > limits.max_depth:
        raise CalculatorError("expression nested too deeply")
    if isinstance(node, ast.Expression):
        return _eval(node.body, limits, depth + 1)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand, limits, depth + 1)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval(node.left, limits, depth + 1), _eval(node.right, limits, depth + 1)
        if isinstance(node.op, ast.Pow):
            if abs(b) > 10_000:
                raise CalculatorError("exponent too large")
            if isinstance(a, int) and isinstance(b, int) and b > 0 and a.bit_length() * b > limits.max_int_bits:
                raise CalculatorError("result too large")
            if a == 0 and b < 0:
                raise CalculatorError("division by zero")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b == 0:
            raise CalculatorError("division by zero")
        try:
            result = _BINOPS[type(node.op)](a, b)
        except OverflowError as e:
            raise CalculatorError("result too large") from e
        if isinstance(result, complex):
            raise CalculatorError("result is not a real number")
        return _check_size(result, limits)
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords and 1 <= len(node.args) <= 2):
        args = [_eval(a, limits, depth + 1) for a in node.args]
        try:
            return _check_size(_FUNCTIONS[node.func.id](*args), limits)
        except (ValueError, TypeError) as e:
            raise CalculatorError(f"{node.func.id}: {e}") from e
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise CalculatorError("use ** for powers")
    what = type(node).__name__
    if isinstance(node, ast.Name):
        what = f"name {node.id!r}"
    elif isinstance(node, ast.Call):
        what = "function call (only sqrt, abs, round)"
    raise CalculatorError(f"not arithmetic: {what}")


def format_number(x: float) -> str:
    """Integers exactly; floats with 12 significant digits and no trailing ".0" for whole values."""
    if isinstance(x, int):
        return str(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.12g}"


def calculate(expression: str, limits: CalculatorLimits = CalculatorLimits()) -> str:
    """Evaluate an arithmetic expression (+ - * / // % **, parentheses, decimals, sqrt/abs/round, pi, e).

    Raises CalculatorError for anything else: names, attributes, calls, strings, comparisons, huge numbers.
    """
    text = expression.strip().translate(_SYMBOLS)
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > limits.max_chars:
        raise CalculatorError(f"expression longer than {limits.max_chars} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError) as e:
        raise CalculatorError(f"syntax error: {getattr(e, 'msg', e)}") from e
    return format_number(_eval(tree, limits))


# ---------------------------------------------------------------------------------------------------------------
# Python runner
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PythonLimits:
    cpu_seconds: int = 2  # RLIMIT_CPU: the kernel kills the child after this much CPU time
    wall_seconds: float = 5.0  # a sleeping or blocked child is killed after this much real time
    memory_bytes: int = 512 * 2**20  # RLIMIT_AS: allocations beyond it fail with MemoryError
    max_output_chars: int = 4000  # what the model reads back (stdout then stderr, truncated)
    max_file_bytes: int = 8 * 2**20  # RLIMIT_FSIZE: largest file (including the captured output) it may write
    network_namespace: bool = True  # use `unshare -rn` when it works, for no network even below Python


# Runs in the child before the user's code: resource limits, then an audit hook that refuses what the sandbox
# forbids (including raising those limits again). It is source text because it must run in the fresh interpreter.
_GUARD = r'''
import os, resource, sys
_cpu, _mem, _fsize = (int(a) for a in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (_mem, _mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (_fsize, _fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
_ROOT = os.path.realpath(os.getcwd())
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
                "os.utime": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2, "shutil.rmtree": 1}
_DENIED = ("socket.", "subprocess.", "resource.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
           "os.forkpty", "os.kill", "os.killpg", "ctypes.", "pty.", "os.setuid", "os.chroot", "mmap.")
def _inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.fsdecode(path))
    return p == _ROOT or p.startswith(_ROOT + os.sep)
_NO_IMPORT = {"_posixsubprocess", "_ctypes", "ctypes", "_xxsubinterpreters", "multiprocessing"}
def _guard(event, args):
    if event == "import" and args[0].partition(".")[0] in _NO_IMPORT:
        raise ImportError(f"sandbox: importing {args[0]} is not allowed")
    if event.startswith(_DENIED) and event != "socket.getservbyname":
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS
        if writing and path is not None and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path}")
    elif event in _PATH_EVENTS:
        for path in args[:_PATH_EVENTS[event]]:
            if path is not None and not _inside(path):
                raise PermissionError(f"sandbox: {event} outside the working directory is not allowed: {path}")
sys.addaudithook(_guard)
del _guard
_code = open("main.py", encoding="utf-8").read()
try:
    exec(compile(_code, "main.py", "exec"), {"__name__": "__main__"})
except SystemExit:
    raise
except BaseException as _e:  # the traceback starts at the user's code, not at this bootstrap
    import traceback
    traceback.print_exception(type(_e), _e, _e.__traceback__.tb_next)
    sys.exit(1)
'''


@lru_cache(maxsize=1)
def _unshare_works() -> bool:
    """Whether `unshare -rn` can make an unprivileged network namespace here (many containers forbid it)."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _head_and_tail(path: Path, max_chars: int) -> str:
    """The file's text, or its start and end around a truncation mark: errors print their last line last."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= max_chars * 4:
            text = f.read().decode("utf-8", errors="replace")
            if len(text) <= max_chars:
                return text
            head, tail = text[:max_chars // 2], text[-max_chars // 2:]
        else:
            head = f.read(max_chars * 2).decode("utf-8", errors="replace")[:max_chars // 2]
            f.seek(size - max_chars * 2)
            tail = f.read().decode("utf-8", errors="replace")[-max_chars // 2:]
    return f"{head}\n[output truncated]\n{tail}"


def run_python(code: str, limits: PythonLimits = PythonLimits()) -> str:
    """Run `code` in a sandboxed child interpreter; return its stdout and stderr (truncated) and how it ended."""
    with tempfile.TemporaryDirectory(prefix="lmforge-py-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        (work / "main.py").write_text(code, encoding="utf-8")
        out_path = Path(tmp) / "output.txt"
        # -u: prints and tracebacks stay in order. The limits are set by the child itself (not by a preexec_fn,
        # which can deadlock a parent that runs threads, as torch does), before the hook forbids changing them.
        cmd = [sys.executable, "-I", "-u", "-c", _GUARD,
               str(limits.cpu_seconds), str(limits.memory_bytes), str(limits.max_file_bytes)]
        if limits.network_namespace and _unshare_works():
            cmd = [shutil.which("unshare") or "unshare", "-rn", "--"] + cmd
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "HOME": str(work),
               "OMP_NUM_THREADS": "1"}
        status = ""
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc, status = None, f"error: killed after {limits.wall_seconds:g} s of wall time"
        text = _head_and_tail(out_path, limits.max_output_chars)
        if rc is not None and rc != 0:
            if rc in (-signal.SIGXCPU, -signal.SIGKILL):
                status = f"error: killed at the CPU-time limit ({limits.cpu_seconds} s)"
            elif rc == -signal.SIGXFSZ:
                status = f"error: output larger than {limits.max_file_bytes} bytes"
            elif "MemoryError" in text:
                status = f"error: out of memory (limit {limits.memory_bytes // 2**20} MiB)"
            elif rc < 0:
                status = f"error: killed by signal {signal.Signals(-rc).name}"
            else:
                status = f"error: exit status {rc}"
        return (text.rstrip("\n") + ("\n" + status if status else "")).strip("\n") or "(no output)"


# ---------------------------------------------------------------------------------------------------------------
# Search over a folder of text files
# ---------------------------------------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9_]+")
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".html", ".json", ".csv", ".log")


def _terms(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


@dataclass
class SearchIndex:
    """BM25 over the passages (blank-line separated, at most ~60 words) of every text file under a folder.

    Built once per folder and read-only: the tool never writes, and paths never leave the folder (symlinks that
    point outside are skipped). Passages rather than files keep snippets short and scores local.
    """

    root: Path
    k1: float = 1.2
    b: float = 0.75
    passages: list[tuple[str, str]] = field(default_factory=list)  # (relative file name, text)
    tfs: list[Counter] = field(default_factory=list)
    df: Counter = field(default_factory=Counter)

    @classmethod
    def build(cls, root: str | Path, max_files: int = 5000, max_bytes: int = 2_000_000) -> "SearchIndex":
        root = Path(root).resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"search folder not found: {root}")
        index = cls(root)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
        for path in files[:max_files]:
            real = path.resolve()
            if root not in real.parents:
                continue
            text = real.read_bytes()[:max_bytes].decode("utf-8", errors="replace")
            for passage in _passages(text):
                tf = Counter(_terms(passage))
                if tf:
                    index.passages.append((str(path.relative_to(root)), passage))
                    index.tfs.append(tf)
                    index.df.update(tf.keys())
        return index

    def search(self, query: str, k: int = 3) -> list[tuple[float, str, str]]:
        q = set(_terms(query))
        if not q or not self.passages:
            return []
        n = len(self.passages)
        avg = sum(sum(tf.values()) for tf in self.tfs) / n
        scored = []
        for i, tf in enumerate(self.tfs):
            length = sum(tf.values())
            s = 0.0
            for t in q:
                f = tf.get(t, 0)
                if f:
                    idf = math.log(1 + (n - self.df[t] + 0.5) / (self.df[t] + 0.5))
                    s += idf * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * length / avg))
            if s > 0:
                scored.append((s, i))
        scored.sort(key=lambda x: (-x[0], x[1]))
        return [(s, *self.passages[i]) for s, i in scored[:k]]


def _passages(text: str, max_words: int = 60) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        words = block.split()
        for i in range(0, len(words), max_words):
            out.append(" ".join(words[i:i + max_words]))
    return out


@lru_cache(maxsize=8)
def _cached_index(root: str) -> SearchIndex:
    return SearchIndex.build(root)


def search_files(root: str | Path, query: str, k: int = 3, max_chars: int = 300) -> str:
    """The top passages for `query` as "file: snippet" lines, or a sentence saying nothing matched."""
    hits = _cached_index(str(Path(root).resolve())).search(query, k)
    if not hits:
        return "no results"
    return "\n".join(f"{name}: {text[:max_chars]}" for _, name, text in hits)


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    run: Callable[[str], str]


def default_tools(search_dir: str | Path | None = None, python_limits: PythonLimits = PythonLimits()) -> dict[str, Tool]:
    """calculator and python always; search only when a folder is given."""
    tools = {
        "calculator": Tool("calculator", "arithmetic: + - * / // % ** ( ) sqrt abs round", calculate),
        "python": Tool("python", "run a short Python program; prints come back",
                       lambda code: run_python(code, python_limits)),
    }
    if search_dir is not None:
        root = Path(search_dir)
        tools["search"] = Tool("search", f"search the text files under {root.name}/",
                               lambda q: search_files(root, q))
    return tools


def run_tool(tools: dict[str, Tool], name: str, arguments: str) -> str:
    """Run one call; every failure becomes "error: ..." text for the model, never an exception for the chat."""
    tool = tools.get(name)
    if tool is None:
        return f"error: unknown tool {name!r}; available: {', '.join(sorted(tools))}"
    try:
        return tool.run(arguments)
    except CalculatorError as e:
        return f"error: {e}"
    except Exception as e:  # noqa: BLE001 - a tool failing must not end the conversation
        return f"error: {type(e).__name__}: {e}"
