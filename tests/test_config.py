"""Configuration written once: flags generated from dataclass fields, parsed back, validated naming the flag."""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from lmforge.cli import build_parser
from lmforge.config import add_config_arguments, cli_fields, config_from_args, field_comments, flag_of
from lmforge.posttrain.configs import SFTConfig, sft_train_defaults
from lmforge.train.config import TrainConfig
from lmforge.utils import LmforgeError


@dataclass
class Toy:
    """A config of every supported kind of field."""

    # the comment right above a field is its help when it has no trailing one
    count: int = 3
    rate: float | None = None  # a trailing comment is the help
    mode: Literal["fast", "slow"] = "fast"  # one of two
    verbose: bool = False  # say more
    tags: dict[str, Any] = field(default_factory=dict, metadata={"flag": "--tag", "help": "metadata wins"})
    names: list[str] = field(default_factory=list)  # several names
    hidden: object = field(default=None, metadata={"cli": False, "why": "set by the stage itself"})


def verb_parser(cls: type, **kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy")
    add_config_arguments(p, cls, **kwargs)
    return p


def subparser(verb: str) -> argparse.ArgumentParser:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[verb]


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_help_text_comes_from_the_comment_or_metadata():
    comments = field_comments(Toy)
    assert comments["rate"] == "a trailing comment is the help"
    assert comments["count"] == "the comment right above a field is its help when it has no trailing one"
    text = " ".join(verb_parser(Toy).format_help().split())
    assert "--rate RATE a trailing comment is the help" in text
    assert "metadata wins" in text and "--mode {fast,slow}" in text and "--verbose, --no-verbose" in text
    assert "(default: 3)" in text and "--hidden" not in text
    pretrain = " ".join(subparser("pretrain").format_help().split())
    assert "AdamW learning rate" in pretrain and "newest checkpoints kept on disk (0 = all) (default: 2)" in pretrain


@dataclass
class ToyChild(Toy):
    """Inherits Toy's fields and their comments; declares one field again with a comment of its own."""

    count: int = 4  # the subclass's own comment wins
    extra: float = 1.0  # a field of the subclass only


def test_help_comes_from_base_classes_too():
    comments = field_comments(ToyChild)
    assert comments["rate"] == "a trailing comment is the help" and comments["verbose"] == "say more"
    assert comments["count"] == "the subclass's own comment wins"
    assert comments["extra"] == "a field of the subclass only"
    text = " ".join(verb_parser(ToyChild).format_help().split())
    assert "--rate RATE a trailing comment is the help" in text and "--extra EXTRA a field of the subclass only" in text
    # the reward model and DPO share their pair-data fields through one base class: one comment, both verbs
    for verb in (["reward", "train"], ["dpo"]):
        help_text = " ".join(_verb(verb).format_help().split())
        assert "--val-frac VAL_FRAC share of the pairs held out" in help_text, verb
        assert "--pad-multiple PAD_MULTIPLE batch widths are rounded up" in help_text, verb


def _verb(path: list[str]) -> argparse.ArgumentParser:
    parser = subparser(path[0])
    for name in path[1:]:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = actions[0].choices[name]
    return parser


def test_every_field_of_every_kind_round_trips():
    args = verb_parser(Toy).parse_args(["--count", "5", "--rate", "0.5", "--mode", "slow", "--verbose",
                                        "--tag", "a=1", "--tag", "b=text", "--names", "x", "y"])
    toy = config_from_args(Toy, args)
    assert toy == Toy(count=5, rate=0.5, mode="slow", verbose=True, tags={"a": 1, "b": "text"}, names=["x", "y"])
    assert config_from_args(Toy, verb_parser(Toy).parse_args(["--rate", "none", "--no-verbose"])) == Toy()
    with pytest.raises(SystemExit):
        verb_parser(Toy).parse_args(["--mode", "medium"])


def test_a_type_without_a_flag_must_say_why():
    @dataclass
    class Odd:
        when: complex = 1j  # no flag can spell this

    with pytest.raises(TypeError, match="cli=False"):
        verb_parser(Odd)


def _other_value(name: str, hint: Any, value: Any) -> Any:
    """A valid value different from `value` for the TrainConfig field `name` of type `hint`."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return next(c for c in typing.get_args(hint) if c != value)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        value = {int: 7, float: 0.5, bool: False}[hint] if value is None else value
    if hint is bool:
        return not value
    if hint is int:
        return value + 3
    if hint is float:
        return value / 2 if value else 0.25
    if hint is str:
        return {"preset": "small", "device": "cpu", "peak_flops": "measure"}[name]
    if typing.get_origin(hint) is dict:
        return {"n_layer": 3}
    raise AssertionError(hint)


DEFAULTS = dataclasses.asdict(TrainConfig())


def _as_argv(cfg: TrainConfig, exclude: tuple[str, ...] = ()) -> list[str]:
    argv = []
    for f in cli_fields(TrainConfig):
        if f.name in exclude:
            continue
        value, flag = getattr(cfg, f.name), flag_of(TrainConfig, f.name)
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            for k, v in value.items():
                argv += [flag, f"{k}={v}"]
        else:
            argv += [flag, str(value)]
    return argv


def test_every_train_config_field_has_a_flag_and_round_trips_through_pretrain():
    pretrain = subparser("pretrain")
    assert {flag_of(TrainConfig, f.name) for f in dataclasses.fields(TrainConfig)} <= flags_of(pretrain)
    hints = typing.get_type_hints(TrainConfig)
    changed = TrainConfig(**{f.name: _other_value(f.name, hints[f.name], getattr(TrainConfig(), f.name))
                             for f in dataclasses.fields(TrainConfig) if f.name not in ("fsdp",)})
    assert all(getattr(changed, k) != v for k, v in DEFAULTS.items() if k != "fsdp")
    base = ["--data", "d", "--out", "o"]
    assert config_from_args(TrainConfig, pretrain.parse_args(base + _as_argv(changed))) == changed
    assert config_from_args(TrainConfig, pretrain.parse_args(base)) == TrainConfig()


def test_sft_flags_cover_its_config_with_one_set_of_defaults():
    sft = subparser("sft")
    for cls in (SFTConfig, TrainConfig):
        names = {f.name for f in cli_fields(cls)} - {"preset", "model_overrides"}  # SFT's model is the checkpoint's
        assert {flag_of(cls, n) for n in names} <= flags_of(sft)
    args = sft.parse_args(["--checkpoint", "c", "--out", "o"])
    cfg = config_from_args(SFTConfig, args, train=config_from_args(TrainConfig, args, defaults=sft_train_defaults()))
    assert cfg == SFTConfig() and cfg.train == sft_train_defaults() and cfg.train.max_steps == 300
    args = sft.parse_args(["--checkpoint", "c", "--out", "o", "--max-steps", "9", "--conversations", "50",
                           "--no-progress"])
    train = config_from_args(TrainConfig, args, defaults=sft_train_defaults())
    cfg = config_from_args(SFTConfig, args, train=train)
    assert (cfg.default_conversations, train.max_steps, train.progress, train.lr) == (50, 9, False, 3e-3)
    assert SFTConfig(train_overrides={"max_steps": 4}).train.max_steps == 4
    with pytest.raises(LmforgeError, match="unknown training setting"):
        SFTConfig(train_overrides={"max_stepz": 4})


@pytest.mark.parametrize("field_name, value, message", [
    ("lr", -1.0, "--lr must be > 0 (got -1.0)"),
    ("lr", math.nan, "--lr must be a finite number (got nan)"),
    ("muon_lr", math.inf, "--muon-lr must be a finite number"),
    ("max_steps", -5, "--max-steps must be >= 0"),
    ("batch_size", 0, "--batch-size must be >= 1"),
    ("keep_checkpoints", -1, "--keep-checkpoints must be >= 0"),
    ("time_budget_s", -1.0, "--time-budget must be >= 0"),
    ("decay", "exp", "--decay must be one of linear, cosine, constant"),
    ("beta2", 1.0, "--beta2 must be in [0, 1)"),
    ("seed", 2**64, "--seed must be in [0, 2**63)"),
    ("batch_size", True, "--batch-size must be an integer"),
    ("peak_flops", "fast", "--peak-flops must be auto, measure or a number"),
    ("peak_flops", "-1e12", "--peak-flops must be auto, measure or a number"),
])
def test_bad_values_are_refused_naming_the_flag(field_name, value, message):
    with pytest.raises(LmforgeError) as e:
        TrainConfig(**{field_name: value})
    assert str(e.value).startswith(message)
    with pytest.raises(LmforgeError, match="--val-frac must be in"):
        SFTConfig(val_frac=2.0)


@dataclass
class Budgets:
    flops: list[float] = field(default_factory=lambda: [1e11, 3e11], metadata={"sep": ","})  # compute budgets


def test_a_separated_list_is_one_word():
    parser = verb_parser(Budgets)
    assert config_from_args(Budgets, parser.parse_args(["--flops", "5e10,1e11,"])).flops == [5e10, 1e11]
    assert config_from_args(Budgets, parser.parse_args([])).flops == [1e11, 3e11]
    assert "(default: 1e+11,3e+11)" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):
        parser.parse_args(["--flops", "1e11,abc"])


@dataclass
class Files:
    tasks: list[str] = field(default_factory=lambda: ["a.jsonl"], metadata={"repeat": True})  # item files


def test_a_repeated_list_flag_appends_and_keeps_its_default_when_absent():
    parser = verb_parser(Files)
    assert config_from_args(Files, parser.parse_args(["--tasks", "x", "--tasks", "y"])).tasks == ["x", "y"]
    assert config_from_args(Files, parser.parse_args([])).tasks == ["a.jsonl"]
