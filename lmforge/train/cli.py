"""`lmforge pretrain`: train a GPT on token shards; the same command again with the same --out resumes it.

Distributed: `torchrun --nproc_per_node K -m lmforge pretrain ...` (DDP; gloo on CPU, NCCL on GPUs; --fsdp shards
the model when it does not fit one device). --batch-size is per process, so the global batch is
batch_size * seq_len * grad_accum * K tokens.

Threads (CPU): torch uses --threads (default: LMFORGE_THREADS or every core this process may use) and OpenMP
workers wait passively (OMP_WAIT_POLICY=PASSIVE), because spinning workers collapse when other programs share the
cores. Under torchrun each process takes cores / K threads.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def _model_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_train_arguments(p: argparse.ArgumentParser, defaults) -> None:
    """Flags for TrainConfig fields (SFT's verb reuses them with its own defaults)."""
    g = p.add_argument_group("training")
    g.add_argument("--max-steps", type=int, default=defaults.max_steps, help="optimizer steps in total")
    g.add_argument("--time-budget", type=float, default=defaults.time_budget_s, metavar="SECONDS",
                   help="stop (with evaluation and a checkpoint) after this long; the schedule follows the clock")
    g.add_argument("--batch-size", type=int, default=defaults.batch_size, help="rows per micro-batch per process")
    g.add_argument("--grad-accum", type=int, default=defaults.grad_accum, help="micro-batches per step")
    g.add_argument("--seq-len", type=int, default=defaults.seq_len, help="context length (default: block_size)")
    g.add_argument("--optimizer", choices=["muon", "adamw"], default=defaults.optimizer,
                   help="muon: Muon for hidden matrices + AdamW for embeddings/head/norms; adamw: AdamW for all")
    g.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate")
    g.add_argument("--embed-lr", type=float, default=defaults.embed_lr,
                   help="AdamW learning rate of the embeddings (default: --lr)")
    g.add_argument("--muon-lr", type=float, default=defaults.muon_lr, help="Muon learning rate")
    g.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    g.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    g.add_argument("--decay", choices=["linear", "cosine", "constant"], default=defaults.decay,
                   help="learning-rate decay after warmup (to --min-lr-frac of the peak)")
    g.add_argument("--decay-start-frac", type=float, default=defaults.decay_start_frac,
                   help="fraction of the run after which the decay starts")
    g.add_argument("--min-lr-frac", type=float, default=defaults.min_lr_frac)
    g.add_argument("--grad-clip", type=float, default=defaults.grad_clip, help="0 = no clipping")
    g.add_argument("--eval-every", type=int, default=defaults.eval_every, help="steps between evaluations")
    g.add_argument("--eval-batches", type=int, default=defaults.eval_batches,
                   help="validation micro-batches per evaluation (0 = the whole split)")
    g.add_argument("--sample-every", type=int, default=defaults.sample_every, help="steps between samples (0 = end)")
    g.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    g.add_argument("--keep-checkpoints", type=int, default=defaults.keep_checkpoints, help="0 = keep all")
    g.add_argument("--seed", type=int, default=defaults.seed)
    g.add_argument("--device", default=defaults.device, help="auto | cpu | cuda")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default=defaults.dtype,
                   help="auto = bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=defaults.compile,
                   help="torch.compile the model (default: on CUDA only; on CPU about 15%% faster steps after "
                        "20-40 s of compiling, see TrainConfig.compile)")
    g.add_argument("--fsdp", action="store_true", help="shard the model across processes (FSDP2) instead of DDP")
    g.add_argument("--no-tensorboard", action="store_true", help="skip TensorBoard events")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--threads", type=int, default=None, help="torch threads per process (CPU)")
    g.add_argument("--init-from", type=Path, default=None, metavar="CKPT",
                   help="start from this checkpoint's weights (a run folder or a checkpoint folder)")


def train_config_from_args(args: argparse.Namespace, **extra):
    from lmforge.train.config import TrainConfig

    return TrainConfig(
        max_steps=args.max_steps, time_budget_s=args.time_budget, batch_size=args.batch_size,
        grad_accum=args.grad_accum, seq_len=args.seq_len,
        optimizer=args.optimizer, lr=args.lr, embed_lr=args.embed_lr, muon_lr=args.muon_lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, decay=args.decay, decay_start_frac=args.decay_start_frac,
        min_lr_frac=args.min_lr_frac, grad_clip=args.grad_clip, eval_every=args.eval_every,
        eval_batches=args.eval_batches, sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, seed=args.seed, device=args.device, dtype=args.dtype,
        compile=args.compile, fsdp=args.fsdp, tensorboard=not args.no_tensorboard, progress=not args.no_progress,
        **extra)


def configure_process_threads(threads: int | None) -> int:
    """This process's torch threads: explicit, else the cores shared evenly among torchrun's local processes."""
    from lmforge.utils import configure_threads

    if threads is None and "LMFORGE_THREADS" not in os.environ and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // int(os.environ["LOCAL_WORLD_SIZE"]))
    return configure_threads(threads)


def cmd_pretrain(args: argparse.Namespace) -> int:
    configure_process_threads(args.threads)
    from lmforge.train.dist import cleanup, setup_distributed
    from lmforge.train.pretrain import run_pretrain

    cfg = train_config_from_args(args, preset=args.preset, model_overrides=dict(args.model or []))
    info = setup_distributed(cfg.device)
    try:
        summary = run_pretrain(args.data, args.out, cfg, init_from=args.init_from, align=args.align, info=info)
    finally:
        cleanup(info)
    if info.is_main:
        shown = {k: v for k, v in summary.items() if k != "samples"}
        print(json.dumps(shown, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from lmforge.train.config import TrainConfig

    p = sub.add_parser("pretrain", help="train a GPT on token shards (resumes when --out holds a run)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="token shards directory (lmforge data tokenize)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, metrics.jsonl, loss.png")
    p.add_argument("--preset", default=TrainConfig.preset, help="model size (see `lmforge model info --list`)")
    p.add_argument("--model", type=_model_override, action="append", metavar="FIELD=VALUE",
                   help="override a model field, e.g. --model n_layer=6 --model qk_norm=true")
    p.add_argument("--align", choices=["random", "bos"], default="random",
                   help="training windows start anywhere (random) or at a document's <|bos|>")
    add_train_arguments(p, TrainConfig())
    p.set_defaults(func=cmd_pretrain)

