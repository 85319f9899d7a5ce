"""The codebase's shape, checked by reading the source: a lower stage never imports a higher one, no two modules
import each other (directly or through others), and no module or function outgrows what a reader can hold.

The import order is DEVELOPERS.md's ("Import order"): it follows the pipeline, except that the inference engine
sits below training. The engine needs only a model and a tokenizer; training uses it to print samples (as
post-training and evaluation use it to generate), so it is a runtime library training builds on.

Every `import` counts, also those inside functions (kept there only to make `lmforge --help` fast) and those under
`TYPE_CHECKING`: each is a dependency a reader has to follow. Dynamic imports by name (`importlib.import_module`,
used by `lmforge/cli.py` to list the verbs) are not edges; that file sits above every stage anyway.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lmforge"

# Import order, lowest first (DEVELOPERS.md). Rank 0 is the shared core every stage may use: the top-level
# modules named here. A module of a stage package takes the package's rank.
STAGE_RANK = {
    "utils": 0, "model": 0, "checkpoint": 0, "config": 0, "kernels": 0,
    "data": 1,
    "tokenizer": 2,  # also the token shards: made with the tokenizer, read by training
    "inference": 3,  # the engine: a model and a tokenizer; training prints samples with it
    "train": 4,
    "posttrain": 5,
    "evaluation": 6,
    "export": 7,
    "serve": 8,  # HTTP front ends over everything below: the API and pages (the engine, the chat format, the tools), the labeling page
    "security": 9,  # attacks a finished model (checkpoint or served endpoint); the speedrun may run a short scan
    "speedrun": 10,
}
MAX_MODULE_LINES = 600  # issue 12's limits (the C runner, runner/run.c, is not Python and not counted)
MAX_FUNCTION_LINES = 80
# The command line lists every stage's verbs, so it sits above all of them.
ENTRY_POINTS = {"cli", "__main__", "__init__"}
TOP = max(STAGE_RANK.values()) + 1


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def stage_rank(module: str) -> int | None:
    """The rank of `lmforge.X...`: its stage package's, the core's, the entry points' (above every stage), or None
    for a module that belongs to no stage (a test below names it)."""
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] in ENTRY_POINTS):
        return TOP  # lmforge/__init__.py, lmforge/cli.py, lmforge/__main__.py
    return STAGE_RANK.get(parts[1])


def imports_of(path: Path, module: str, modules: dict[str, Path]) -> set[str]:
    """The lmforge modules that `path` imports: `from lmforge.x import name` is an edge to `lmforge.x.name` when
    that is a module, else to `lmforge.x`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a relative import: resolve it against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import lmforge.x.y` when y is a name, not a module
                target = target.rpartition(".")[0]
            if target.startswith("lmforge") and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b` for every import from a module of a lower stage to one of a higher stage."""
    ranked = [(a, b, stage_rank(a), stage_rank(b)) for a, targets in graph.items() for b in targets]
    return sorted(f"{a} -> {b}" for a, b, ra, rb in ranked if ra is not None and rb is not None and rb > ra)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_sees_what_it_must():
    """The checks themselves: an upward edge and a cycle in a made-up graph are found, and real imports parse."""
    graph = {"lmforge.data.a": {"lmforge.train.b"}, "lmforge.train.b": {"lmforge.data.a"}, "lmforge.utils": set()}
    assert upward_edges(graph) == ["lmforge.data.a -> lmforge.train.b"]
    assert cycles(graph) == [["lmforge.data.a", "lmforge.train.b"]]
    real = import_graph()
    assert "lmforge.utils" in real["lmforge.checkpoint"]
    assert "lmforge.tokenizer.chat_format" in real["lmforge.inference.chat"]


def test_every_module_belongs_to_a_stage():
    strays = [module for module in all_modules() if stage_rank(module) is None]
    assert not strays, f"modules in no stage (move them into a stage package, or add them to STAGE_RANK): {strays}"


def test_no_lower_stage_imports_a_higher_one():
    edges = upward_edges(import_graph())
    assert not edges, "imports from a lower pipeline stage up to a higher one:\n" + "\n".join(edges)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in found)


def long_modules() -> list[str]:
    """`path: N lines` for every module of the package longer than MAX_MODULE_LINES."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{path.relative_to(PACKAGE.parent)}: {lines} lines")
    return found


def long_functions(source: str, filename: str) -> list[str]:
    """`file:line name: N lines` for every function (methods and nested ones included) longer than
    MAX_FUNCTION_LINES, counted from its first decorator or `def` to its last line."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = node.end_lineno - start + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{filename}:{node.lineno} {node.name}: {lines} lines")
    return found


def test_the_size_checks_see_what_they_must():
    """A function one line over the limit is found, one at the limit and a long class of short methods are not."""
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    at_limit = f"def fine():\n{body}"
    over = f"@staticmethod\ndef too_long():\n{body}"
    methods = "class Many:\n" + "".join(f"    def m{i}(self):\n        return {i}\n" for i in range(60))
    assert long_functions(at_limit + methods, "a.py") == []
    assert long_functions(over, "b.py") == [f"b.py:2 too_long: {MAX_FUNCTION_LINES + 1} lines"]


def test_no_module_is_too_long():
    found = long_modules()
    assert not found, f"modules over {MAX_MODULE_LINES} lines (split them by responsibility):\n" + "\n".join(found)


def test_no_function_is_too_long():
    found = [hit for path in sorted(PACKAGE.rglob("*.py"))
             for hit in long_functions(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(found)
