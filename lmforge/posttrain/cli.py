"""`lmforge sft`: fine-tune a pretrained checkpoint into an assistant; `lmforge sft data`: see or write the default
SFT data.

    lmforge sft --checkpoint runs/pretrain --out runs/sft                      # on the generated default data
    lmforge sft --checkpoint runs/pretrain --data chat.jsonl alpaca.json --out runs/sft --max-steps 500
    lmforge sft data --preview 5                                               # print generated conversations
    lmforge sft data --out sft.jsonl --n 10000                                 # write them as messages JSONL

`lmforge reward train|score` (the reward model) and `lmforge dpo` are registered here too, in their own functions.

Data files may be OpenAI `messages` JSONL, Alpaca, ShareGPT or hh-rlhf (`chosen`), mixed freely; bad rows are
reported with their line numbers and skipped. Running the same command again with the same --out resumes exactly.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any


def _cmd_data(args: argparse.Namespace) -> int:
    from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations, write_jsonl
    from lmforge.posttrain.refusal_data import manifest_path, refusal_prompts_from_file, refusal_source
    from lmforge.tokenizer.chat_format import render_conversation
    from lmforge.utils import write_json

    prompts: tuple[str, ...] = ()
    source = None
    if args.refusal_prompts is not None:
        prompts, dropped = refusal_prompts_from_file(args.refusal_prompts)
        source = refusal_source(args.refusal_prompts, prompts, dropped)
        print(f"{len(prompts)} harmful requests to refuse from {args.refusal_prompts} ({dropped} dropped as "
              "near-duplicates of HarmBench/XSTest evaluation prompts)")
    weights = {} if args.lookalike_weight is None else {"lookalike_weight": args.lookalike_weight}
    cfg = DefaultDataConfig(n=args.n, seed=args.seed, refusal_prompts=prompts, **weights)
    if args.out is not None:
        n = write_jsonl(generate_default_conversations(cfg), str(args.out))
        # what the file refuses, for `lmforge sft` to record and `security scan` to mark as seen in training
        write_json(manifest_path(args.out), {"generator": "lmforge sft data", "conversations": n, "seed": args.seed,
                                             "refusal_prompts": source})
        print(f"wrote {n} conversations to {args.out} (and {manifest_path(args.out).name})")
    if args.preview or args.out is None:
        count = args.preview or 5
        convs = list(generate_default_conversations(replace(cfg, n=count)))
        tok = None
        if args.tokenizer is not None:
            from lmforge.tokenizer import Tokenizer

            tok = Tokenizer.load(args.tokenizer)
        for i, msgs in enumerate(convs, 1):
            print(f"--- conversation {i} ---")
            if tok is None:
                for m in msgs:
                    call = "".join(f" [{c['name']}: {c['arguments']}]" for c in m.get("tool_calls", []))
                    print(f"{m['role']:>9}: {m['content']}{call}")
            else:  # the exact tokens, with the trained-on ones in [brackets]
                ids, mask = render_conversation(tok, msgs)
                print("".join(f"[{tok.decode([t])}]" if k else tok.decode([t]) for t, k in zip(ids, mask)))
    return 0


def _cmd_sft(args: argparse.Namespace) -> int:
    from lmforge.config import config_from_args
    from lmforge.posttrain.configs import SFTConfig, sft_train_defaults
    from lmforge.posttrain.sft import run_sft
    from lmforge.train.config import TrainConfig
    from lmforge.train.dist import pick_device
    from lmforge.utils import LmforgeError, configure_threads

    if args.checkpoint is None or args.out is None:
        raise LmforgeError("lmforge sft needs --checkpoint BASE and --out DIR (or use `lmforge sft data`)")
    train = config_from_args(TrainConfig, args, defaults=sft_train_defaults())
    cfg = config_from_args(SFTConfig, args, train=train)
    pick_device(train.device)  # refuse a bad --device before anything is written
    configure_threads(args.threads)
    summary = run_sft(cfg, args.checkpoint, args.out, data=args.data, val_data=args.val_data)
    print(json.dumps({k: summary.get(k) for k in ("run_dir", "checkpoint", "step", "loss", "val_loss",
                                                   "tokens_per_s", "seconds")}, indent=2))
    return 0


def _cmd_rlhf_sample(args: argparse.Namespace) -> int:
    from lmforge.config import config_from_args
    from lmforge.posttrain.compare import SampleConfig, run_sample
    from lmforge.utils import configure_threads, resolve_device

    cfg = config_from_args(SampleConfig, args)
    device = resolve_device(args.device)
    configure_threads(args.threads)
    manifest = run_sample(cfg, args.checkpoint, args.out, prompts_path=args.prompts, device=device)
    print(json.dumps({"out": str(args.out), "items": manifest.get("n_items"), "k": cfg.k}))
    return 0


def rlhf_verbs(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The `lmforge rlhf` verb group (sample, train): created once here, each stage adds its own verb to it."""
    p = sub.add_parser("rlhf", help="learning from preferences: sample K responses per prompt (`rlhf sample`), reinforcement "
                       "learning (`rlhf train`)",
                       description="Reinforcement learning from human (or simulated) preferences.")
    return p.add_subparsers(dest="rlhf_verb", metavar="VERB", required=True)


def register_rlhf_sample(verbs: argparse._SubParsersAction) -> None:
    from lmforge.config import add_config_arguments
    from lmforge.posttrain import compare
    from lmforge.posttrain.compare import SampleConfig

    p = verbs.add_parser("sample", help="K responses per prompt from a checkpoint, to compare and label",
                         description=compare.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="SFT run folder or checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="sample folder (resumes a killed run)")
    p.add_argument("--prompts", type=Path, default=None,
                   help="prompts JSONL ({prompt, kind?, expression?} or messages); default: generated held-out ones")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    add_config_arguments(p, SampleConfig, title="sampling (SampleConfig)")
    p.set_defaults(func=_cmd_rlhf_sample)


def register(sub: argparse._SubParsersAction) -> None:
    register_sft(sub)
    verbs = rlhf_verbs(sub)
    register_rlhf_sample(verbs)
    register_rlhf_train(verbs)


def register_sft(sub: argparse._SubParsersAction) -> None:
    from lmforge.config import add_config_arguments
    from lmforge.posttrain.configs import SFTConfig, sft_train_defaults
    from lmforge.train.config import TrainConfig

    p = sub.add_parser("sft", help="supervised fine-tuning on conversations (and `sft data` for the default data)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="pretrained run folder or checkpoint folder to start from")
    p.add_argument("--out", type=Path, help="SFT run folder (resumes if it holds checkpoints)")
    p.add_argument("--data", nargs="+", default=None, metavar="FILE",
                   help="conversation files (.jsonl, .jsonl.gz, .json); default: the generated default data")
    p.add_argument("--val-data", nargs="+", default=None, metavar="FILE",
                   help="held-out conversation files (default: --val-frac of the training data)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    add_config_arguments(p, SFTConfig, title="SFT data (SFTConfig)")
    # the model is the checkpoint's: SFT has no preset or model overrides
    add_config_arguments(p, TrainConfig, defaults=sft_train_defaults(), title="training (TrainConfig)",
                         exclude=("preset", "model_overrides"))
    p.set_defaults(func=_cmd_sft)
    verbs = p.add_subparsers(dest="sft_verb", metavar="data", required=False)
    d = verbs.add_parser("data", help="print (--preview) or write (--out) the generated default SFT data",
                         description="The embedded default SFT data: documentation Q&A from the stdlib, identity, "
                         "calculator tool use, refusals. Seeded: the same seed gives the same conversations.")
    d.add_argument("--preview", type=int, nargs="?", const=5, default=0, metavar="N",
                   help="print N conversations (default 5)")
    d.add_argument("--out", type=Path, default=None, help="write the conversations as messages JSONL")
    d.add_argument("--n", type=int, default=4000, help="conversations to write with --out")
    d.add_argument("--seed", type=int, default=1337)
    d.add_argument("--refusal-prompts", type=Path, default=None, metavar="FILE",
                   help="harmful requests to refuse (AdvBench CSV `goal`, a CSV `prompt`/`Behavior` column, JSONL "
                   "{prompt} or one a line), mixed in with safe look-alikes; near-duplicates of the shared data's "
                   "HarmBench and XSTest prompts are dropped (default: off)")
    d.add_argument("--lookalike-weight", type=float, default=None,
                   help="mix weight of the safe look-alikes that come with --refusal-prompts (default: "
                   "DefaultDataConfig's, 0.2)")
    d.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer folder: preview the exact tokens, with the trained-on ones in [brackets]")
    d.set_defaults(func=_cmd_data)
    _register_reward(sub)
    _register_dpo(sub)


def _cmd_rlhf_train(args: argparse.Namespace) -> int:
    from lmforge.config import config_from_args
    from lmforge.posttrain.rl import run_rl
    from lmforge.posttrain.rl_config import RLConfig
    from lmforge.utils import configure_threads, resolve_device

    cfg = config_from_args(RLConfig, args)
    cfg.device = resolve_device(cfg.device)
    configure_threads(args.threads)
    summary = run_rl(cfg, args.checkpoint, args.out)
    print(json.dumps({k: summary[k] for k in ("run_dir", "checkpoint", "step", "reward_vs_kl_plot", "seconds")},
                     indent=2))
    return 0


def register_rlhf_train(verbs: argparse._SubParsersAction) -> None:
    """`lmforge rlhf train`: GRPO/RLOO or PPO from an SFT checkpoint (see `lmforge.posttrain.rl`)."""
    from lmforge.config import add_config_arguments, module_docstring
    from lmforge.posttrain.rl_config import RLConfig

    p = verbs.add_parser("train", help="reinforcement learning (GRPO/RLOO or PPO) with verifiable rewards",
                         description=module_docstring("lmforge.posttrain.rl"),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="SFT run folder or checkpoint folder to start from")
    p.add_argument("--out", type=Path, required=True, help="RL run folder (resumes if it holds checkpoints)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    add_config_arguments(p, RLConfig, title="reinforcement learning (RLConfig)")
    p.set_defaults(func=_cmd_rlhf_train)



def _training_run_args(p: argparse.ArgumentParser, stage_cls: type, train_defaults: Any, what: str) -> None:
    """The flags every preference-training verb shares: the start checkpoint, the pairs, the run folder, threads,
    the stage's own config and the training run's (the model is the checkpoint's: no preset or overrides)."""
    from lmforge.config import add_config_arguments
    from lmforge.train.config import TrainConfig

    p.add_argument("--checkpoint", type=Path, required=True, help="SFT run folder or checkpoint folder to start from")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE",
                   help="preference pairs: {prompt, chosen, rejected} JSONL, hh-rlhf or GSM8K solutions (.gz too)")
    p.add_argument("--val-data", nargs="+", default=None, metavar="FILE",
                   help="held-out pairs (default: --val-last N or --val-frac of --data)")
    p.add_argument("--out", type=Path, required=True, help=f"{what} run folder (resumes if it holds checkpoints)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    add_config_arguments(p, stage_cls, title=f"{what} ({stage_cls.__name__})")
    add_config_arguments(p, TrainConfig, defaults=train_defaults, title="training (TrainConfig)",
                         exclude=("preset", "model_overrides"))


def _stage_config(stage_cls: type, train_defaults: Any, args: argparse.Namespace) -> Any:
    """The stage's config from the flags, after the thread count and device are checked (nothing written yet)."""
    from lmforge.config import config_from_args
    from lmforge.train.config import TrainConfig
    from lmforge.train.dist import pick_device
    from lmforge.utils import configure_threads

    train = config_from_args(TrainConfig, args, defaults=train_defaults)
    cfg = config_from_args(stage_cls, args, train=train)
    pick_device(train.device)
    configure_threads(args.threads)
    return cfg


def _run_pairs_stage(args: argparse.Namespace, config_cls: type, defaults: Any, run: Any) -> int:
    """`reward train` and `dpo`: the stage's config from the flags, the run on the pairs files, its summary."""
    cfg = _stage_config(config_cls, defaults, args)
    summary = run(cfg, args.checkpoint, args.out, args.data, args.val_data)
    print(json.dumps({k: summary.get(k) for k in ("run_dir", "checkpoint", "step", "loss", "val_loss", "eval",
                                                   "seconds")}, indent=2))
    return 0


def _cmd_reward_train(args: argparse.Namespace) -> int:
    from lmforge.posttrain.configs import RewardConfig, reward_train_defaults
    from lmforge.posttrain.reward import run_reward_train

    return _run_pairs_stage(args, RewardConfig, reward_train_defaults(), run_reward_train)


def _cmd_reward_score(args: argparse.Namespace) -> int:
    from lmforge.posttrain.reward import score_pairs_file

    report = score_pairs_file(args.checkpoint, args.pairs, args.out, args.batch_size)
    print(json.dumps(report, indent=2))
    return 0


def _register_reward(sub: argparse._SubParsersAction) -> None:
    from lmforge.posttrain.configs import RewardConfig, reward_train_defaults

    p = sub.add_parser("reward", help="train a reward model on preference pairs (`reward train`), score pairs "
                       "(`reward score`)", description="The reward model: the SFT model with a scalar head read at "
                       "each response's end-of-turn token, trained with the Bradley-Terry loss.")
    verbs = p.add_subparsers(dest="reward_verb", metavar="{train,score}", required=True)
    t = verbs.add_parser("train", help="train a reward model from an SFT checkpoint",
                         description="Train a reward model; held-out pairwise accuracy (95%% Wilson interval) and "
                         "mean margin are printed and kept in reward_summary.json. The same --out resumes exactly.")
    _training_run_args(t, RewardConfig, reward_train_defaults(), "reward model")
    t.set_defaults(func=_cmd_reward_train)
    s = verbs.add_parser("score", help="score preference pairs with a reward model: accuracy, margin, rewards",
                         description="Reward of each pair's chosen and rejected response; prints the pairwise "
                         "accuracy with its 95%% Wilson interval and the mean margin.")
    s.add_argument("--checkpoint", type=Path, required=True, help="reward-model run folder or checkpoint folder")
    s.add_argument("--pairs", type=Path, required=True, help="preference pairs file")
    s.add_argument("--out", type=Path, default=None, help="write {chosen_reward, rejected_reward} per pair (JSONL)")
    s.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass")
    s.set_defaults(func=_cmd_reward_score)


def _cmd_dpo(args: argparse.Namespace) -> int:
    from lmforge.posttrain.configs import DPOConfig, dpo_train_defaults
    from lmforge.posttrain.dpo import run_dpo

    return _run_pairs_stage(args, DPOConfig, dpo_train_defaults(), run_dpo)


def _register_dpo(sub: argparse._SubParsersAction) -> None:
    from lmforge.posttrain.configs import DPOConfig, dpo_train_defaults

    p = sub.add_parser("dpo", help="direct preference optimisation of an SFT model on preference pairs",
                       description="DPO: the SFT model (also the frozen reference, whose log-probs are computed "
                       "once and cached in --out) trained on preference pairs. Logs chosen and rejected log-probs, "
                       "their shift from the reference, the margin and the accuracy every step.")
    _training_run_args(p, DPOConfig, dpo_train_defaults(), "DPO")
    p.set_defaults(func=_cmd_dpo)
