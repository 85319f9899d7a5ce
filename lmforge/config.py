"""Configuration written once: a dataclass field becomes a command-line flag, and parsed flags become the dataclass.

A stage declares each setting once, with its type, default and a trailing comment:

    @dataclass
    class TrainConfig:
        lr: float = 6e-3  # AdamW learning rate
        decay: Literal["linear", "cosine"] = "linear"  # shape of the decay after warmup
        fsdp: bool = False  # shard the model across processes

        def __post_init__(self) -> None:
            check_fields(self)                         # types, finite numbers, Literal choices
            require(self, "lr", self.lr > 0, "must be > 0")

and its CLI calls `add_config_arguments(parser, TrainConfig)` (giving `--lr FLOAT`, `--decay {linear,cosine}`,
`--fsdp/--no-fsdp`, each with the comment as help text and the default shown) and `config_from_args(TrainConfig,
args)`. Nothing is written a second time, so a new field has a flag the moment it exists, and every refusal names
the flag the user typed (`--lr must be > 0 (got -1.0)`), whether the value came from the command line or from code.

Per field, `field(metadata=...)` may set: "flag" (another spelling than `--field-name`), "help" (instead of the
comment), "metavar", or "cli": False with "why" (a field that deliberately has no flag, e.g. one set by the stage).
Types: bool (`--x/--no-x`), int, float, str, `Literal[...]` (choices), `X | None` (the word `none` gives None),
`dict[str, X]` (a repeated `--flag KEY=VALUE`, each value read as JSON when it parses, else as text), `list[X]`
(`--flag A B C`; with metadata "sep" one word `--flag A,B,C`; with "repeat" `--flag A --flag B`). A nested
dataclass field gets no flags of its own: its stage adds its class's flags beside.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import json
import linecache
import math
import tokenize
import types
import typing
from typing import Any, Callable, Literal

from lmforge.utils import LmforgeError


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Each field's help text from the class source: its trailing `# comment`, else the comment lines right above
    it. Parsed once per class, so the comment a reader sees in the code is the help a user sees on the CLI. Fields
    a dataclass inherits take their comments from the base class that declares them (a subclass that declares a
    field again, with its own comment, wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_own_field_comments(klass))
    return out


@functools.cache
def _parsed_module(filename: str) -> tuple[list[str], dict[str, ast.ClassDef]]:
    """A module's lines and its classes by qualified name, parsed once for every config class it defines
    (`inspect.getsource` parses the whole module again for each class)."""
    lines = linecache.getlines(filename)
    classes: dict[str, ast.ClassDef] = {}

    def visit(statements: list[ast.stmt], prefix: str) -> None:
        for child in statements:
            if isinstance(child, ast.ClassDef):
                classes[prefix + child.name] = child
                visit(child.body, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child.body, f"{prefix}{child.name}.<locals>.")
            else:  # if/for/while/with/try blocks: their nested statement lists
                for name in ("body", "orelse", "finalbody"):
                    visit(getattr(child, name, []), prefix)
                for handler in getattr(child, "handlers", []):
                    visit(handler.body, prefix)

    visit(ast.parse("".join(lines)).body, "")
    return lines, classes


@functools.cache
def _own_field_comments(cls: type) -> dict[str, str]:
    """The comments of the fields declared in `cls`'s own body (only the class's lines are tokenized: tokenizing
    whole modules cost more than the command line's other work)."""
    filename = inspect.getsourcefile(cls) or ""
    lines, classes = _parsed_module(filename)
    class_node = classes.get(cls.__qualname__)
    if class_node is None:
        raise TypeError(f"no source found for config class {cls.__qualname__} in {filename}")
    first = class_node.lineno
    body = lines[first - 1:class_node.end_lineno]
    comments: dict[int, tuple[int, str]] = {}  # line (of the module) -> (column, text)
    for tok in tokenize.generate_tokens(io.StringIO("".join(body)).readline):
        if tok.type == tokenize.COMMENT:
            comments[first + tok.start[0] - 1] = (tok.start[1], tok.string.lstrip("#").strip())
    out: dict[str, str] = {}
    for node in class_node.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        trailing = comments.get(node.end_lineno)
        if trailing is not None and trailing[0] > 0 and lines[node.end_lineno - 1][:trailing[0]].strip():
            out[node.target.id] = trailing[1]
            continue
        above, line = [], node.lineno - 1
        while line in comments and not lines[line - 1][:comments[line][0]].strip():
            above.insert(0, comments[line][1])
            line -= 1
        if above:
            out[node.target.id] = " ".join(above)
    return out


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def flag_of(cls: type, name: str) -> str:
    """The flag that sets field `name` of `cls`: metadata "flag", else `--name-with-dashes`."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.metadata.get("flag", "--" + name.replace("_", "-"))


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that have a flag (all but nested dataclasses and those marked `cli: False`)."""
    return [f for f in dataclasses.fields(cls)
            if f.metadata.get("cli", True) and not dataclasses.is_dataclass(_hints(cls)[f.name])]


def _parser_of(kind: type, optional: bool) -> Callable[[str], Any]:
    """argparse `type=` for a scalar: the type itself, accepting the word `none` when None is allowed."""
    if not optional:
        return kind

    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error: "invalid int value"
    return parse


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _separated(item: type, sep: str) -> Callable[[str], list[Any]]:
    """argparse `type=` for a list in one word, its items joined by `sep`."""
    def parse(text: str) -> list[Any]:
        return [item(v) for v in text.split(sep) if v.strip()]

    parse.__name__ = f"{sep!r}-separated {item.__name__}"  # argparse's error: "invalid ','-separated float value"
    return parse


def _argument(f: dataclasses.Field, hint: Any, default: Any, help_text: str) -> dict[str, Any]:
    """argparse keyword arguments of one field."""
    kind, optional = _unwrap_optional(hint)
    origin = typing.get_origin(kind)
    meta = {k: f.metadata[k] for k in ("metavar",) if k in f.metadata}
    if "sep" in f.metadata and isinstance(default, list):  # shown as it is typed: 5e+10,1e+11
        default_text = f.metadata["sep"].join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
    else:
        default_text = str(default)
    shown = "" if default is None or default == {} or default == [] else f" (default: {default_text})"
    text = (help_text + shown).replace("%", "%%")
    if kind is bool:
        return dict(action=argparse.BooleanOptionalAction, default=default, help=text)
    if origin is Literal:
        choices = list(typing.get_args(kind))
        return dict(type=_parser_of(type(choices[0]), optional), choices=choices, default=default, help=text,
                    **meta)
    if origin is dict:
        return dict(type=_key_value, action="append", default=None, help=text,
                    metavar=f.metadata.get("metavar", "KEY=VALUE"))
    if origin is list:
        (item,) = typing.get_args(kind)
        if f.metadata.get("repeat"):  # `--flag A --flag B`, as argparse's append
            return dict(type=item, action="append", default=None, help=text, **meta)
        if "sep" in f.metadata:  # one word, e.g. `--flops 1e11,3e11`
            return dict(type=_separated(item, f.metadata["sep"]), default=default, help=text,
                        metavar=f.metadata.get("metavar", f"{item.__name__.upper()}{f.metadata['sep']}..."))
        return dict(type=item, nargs="*", default=default, help=text, **meta)
    if kind in (int, float, str):
        return dict(type=_parser_of(kind, optional), default=default, help=text, **meta)
    raise TypeError(f"{f.name}: no flag for type {hint!r}; give it metadata cli=False and a reason ('why')")


def _default(cls: type, name: str, defaults: Any) -> Any:
    """A field's default: from the `defaults` instance when given, else the class's own (no instance is built, so
    building a parser runs no validation and imports nothing heavy)."""
    if defaults is not None:
        return getattr(defaults, name)
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, defaults: Any = None, title: str | None = None,
                         exclude: tuple[str, ...] = (), defaults_later: bool = False) -> None:
    """One flag per field of the dataclass `cls`; `defaults` (an instance) sets the defaults shown and used
    (SFT's training defaults differ from pretraining's); `exclude` names fields this verb sets itself.
    `defaults_later`: a flag not given leaves no value at all, so that `config_from_args` can take its default from
    an instance chosen after parsing (pretraining's per-preset batch and rates); the help shows the class's."""
    target = parser.add_argument_group(title) if title else parser
    comments = field_comments(cls)
    for f in cli_fields(cls):
        if f.name in exclude:
            continue
        help_text = f.metadata.get("help", comments.get(f.name, ""))
        kwargs = _argument(f, _hints(cls)[f.name], _default(cls, f.name, defaults), help_text)
        if defaults_later:
            kwargs["default"] = argparse.SUPPRESS
        target.add_argument(flag_of(cls, f.name), dest=f.name, **kwargs)


def module_docstring(name: str) -> str | None:
    """A module's docstring read from its source, without importing it: a verb whose help is the text of a module
    that imports torch (the RL loop, the win-rate judge) shows it while the command line is being built, which
    must not import torch."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8")))


def config_from_args(cls: type, args: argparse.Namespace, defaults: Any = None, **fixed: Any) -> Any:
    """The dataclass built from parsed flags (fields without a flag in this verb keep `defaults`' values, `fixed`
    sets fields the verb decides itself); its `__post_init__` validates, naming the flags."""
    values = {f.name: _default(cls, f.name, defaults) for f in dataclasses.fields(cls)}
    for f in cli_fields(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if typing.get_origin(_unwrap_optional(_hints(cls)[f.name])[0]) is dict:
            value = {**values[f.name], **dict(value or [])}
        elif f.metadata.get("repeat") and value is None:  # never given: the default list
            value = values[f.name]
        values[f.name] = value
    return cls(**{**values, **fixed})


def _type_error(obj: Any, f: dataclasses.Field, hint: Any) -> str | None:
    """Why the value of field `f` does not fit its type (None when it does): a wrong type, NaN or infinity, a value
    outside a Literal's choices."""
    value = getattr(obj, f.name)
    kind, optional = _unwrap_optional(hint)
    if value is None:
        return None if optional else "must be set"
    origin = typing.get_origin(kind)
    if origin is Literal:
        choices = typing.get_args(kind)
        return None if value in choices else f"must be one of {', '.join(map(str, choices))}"
    if kind is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if kind is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        return None if math.isfinite(value) else "must be a finite number"
    if kind is str:
        return None if isinstance(value, str) else "must be text"
    if origin in (dict, list):
        return None if isinstance(value, origin) else f"must be a {origin.__name__}"
    return None


def check_fields(obj: Any) -> None:
    """Refuse a field whose value does not fit its declared type (see `_type_error`), naming its flag."""
    cls = type(obj)
    for f in dataclasses.fields(cls):
        reason = _type_error(obj, f, _hints(cls)[f.name])
        if reason:
            raise LmforgeError(f"{flag_of(cls, f.name)} {reason} (got {getattr(obj, f.name)!r})")


def require(obj: Any, name: str, ok: bool, rule: str) -> None:
    """Refuse field `name` of `obj` unless `ok`: `--flag RULE (got VALUE)`."""
    if not ok:
        raise LmforgeError(f"{flag_of(type(obj), name)} {rule} (got {getattr(obj, name)!r})")
