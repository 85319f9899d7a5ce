"""The training loop shared by pretraining and SFT.

    from lmforge.train import TrainConfig, train
    summary = train(cfg, data, val_data, out_dir, init_checkpoint=None, tokenizer_dir=None)

`data` is any batch source: an object with `next_batch() -> (x, y)` (int64 tensors of shape (batch, seq_len) for
this process; `y` holds the next tokens, -1 where no loss is wanted, e.g. SFT's prompt positions and padding),
`state_dict() -> dict` (JSON-able) and `load_state_dict(dict)`; the loader's position is saved with every
checkpoint, which is what makes a resumed run continue exactly. `val_data` is None or a callable returning a fresh
iterable of (x, y) validation batches (the same ones every call). Pretraining uses `ShardBatches` and
`ValidationWindows` from `lmforge.train.loader`; SFT brings its own sources.

The loss of a step is the mean cross-entropy over every target that is not -1 in the step's global batch (all
micro-batches of all processes): each micro-batch's summed loss is divided by the global count of targets. With
masks, that weighs every supervised token equally, however the tokens fall into rows, micro-batches and ranks, so
K processes compute the same step as one process with K times the batch.

Running `train` again with the same `out_dir` resumes from the newest checkpoint in it (weights, optimizer
moments, data position, step); `init_checkpoint` (a run folder or checkpoint folder) starts a new run from
existing weights instead (SFT from the pretrained model). Under torchrun the function runs in every process; call
`lmforge.train.dist.setup_distributed()` first or let `train` do it.

Returns a JSON-able summary: run_dir, checkpoint, step, loss, val_loss, val_bpb, tokens, seconds, tokens_per_s,
mfu, params.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch

from lmforge.checkpoint import CKPT_SUBDIR, checkpoint_name, load_state, load_train_state, load_weights, save_train_checkpoint, train_checkpoints
from lmforge.model import GPT, GPTConfig
from lmforge.train.config import TrainConfig
from lmforge.train.dist import DistInfo, all_reduce_sum, barrier, setup_distributed, wrap_model
from lmforge.train.logging import RunLogger, peak_flops
from lmforge.train.optim import build_optimizers
from lmforge.train.schedule import lr_multiplier
from lmforge.utils import LmforgeError, write_json

Batch = tuple[torch.Tensor, torch.Tensor]
ValSource = Callable[[], Iterable[Batch]]


class BatchSource(Protocol):
    def next_batch(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def resolve_model_config(cfg: TrainConfig, model_config: GPTConfig | None = None) -> GPTConfig:
    if model_config is not None:
        return model_config
    try:
        return GPTConfig.from_preset(cfg.preset, **cfg.model_overrides)
    except (TypeError, ValueError) as e:
        raise LmforgeError(f"model preset {cfg.preset!r} with overrides {cfg.model_overrides}: {e}") from e


def _sum_cross_entropy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x, y, reduction="sum", return_logits=False)[1]


@torch.no_grad()
def evaluate(model: torch.nn.Module, val_data: ValSource, info: DistInfo, autocast: Any,
             token_bytes: torch.Tensor | None = None) -> dict[str, float]:
    """Mean validation loss (nats/token) and, given each token's byte length, bits per byte.

    Bits per byte divides the summed loss (in bits) by the UTF-8 bytes the scored tokens stand for, which does not
    depend on how the text was cut into tokens: models with different tokenizers become comparable.
    """
    from lmforge.evaluation.bpb import loss_and_bytes

    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=info.device)
    for x, y in val_data():
        x, y = x.to(info.device), y.to(info.device)
        with autocast():
            logits, _ = model(x)
        totals += torch.tensor(loss_and_bytes(logits, y, token_bytes), dtype=torch.float64, device=info.device)
    all_reduce_sum(totals, info)
    model.train(was_training)
    loss_sum, count, nbytes = totals.tolist()
    if count == 0:
        raise LmforgeError("validation data produced no scored tokens")
    out = {"val_loss": loss_sum / count}
    if token_bytes is not None and nbytes > 0:
        out["val_bpb"] = loss_sum / math.log(2) / nbytes
    return out


def _load_decoder(tokenizer_dir: Path | None):
    if tokenizer_dir is None or not Path(tokenizer_dir).is_dir():
        return None
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.load(tokenizer_dir)


def train(cfg: TrainConfig, data: BatchSource, val_data: ValSource | None, out_dir: str | Path,
          init_checkpoint: str | Path | None = None, tokenizer_dir: str | Path | None = None,
          model_config: GPTConfig | None = None, sample_prompts: list[list[int]] | None = None,
          info: DistInfo | None = None) -> dict[str, Any]:
    """Train (or resume training) a GPT; see the module docstring for the contract of every argument.

    `tokenizer_dir` is copied into every checkpoint and, when given, turns on bits per byte and decoded samples
    (of `sample_prompts`, token-id lists, at each sampling interval). `model_config` overrides the config's preset.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = info or setup_distributed(cfg.device)
    device = info.device
    torch.manual_seed(cfg.seed)

    # The model: resumed run > init checkpoint > preset.
    resume = train_checkpoints(out_dir)
    resume_ckpt = resume[-1] if resume else None
    if resume_ckpt is not None:
        mcfg, state, _ = load_state(resume_ckpt)
    elif init_checkpoint is not None:
        mcfg, state, _ = load_state(init_checkpoint)
    else:
        mcfg, state = resolve_model_config(cfg, model_config), None
    seq_len = cfg.seq_len or mcfg.block_size
    if seq_len > mcfg.block_size:
        raise LmforgeError(f"TrainConfig.seq_len {seq_len} is longer than the model's block_size {mcfg.block_size}")
    raw = GPT(mcfg)
    if state is not None:
        load_weights(raw, state, resume_ckpt or init_checkpoint)
    raw.to(device)
    if cfg.optimizer == "muon" and cfg.fsdp:
        raise LmforgeError("Muon needs whole matrices; with --fsdp use --optimizer adamw")
    model = wrap_model(raw, info, cfg.fsdp)
    use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 and not cfg.fsdp \
        else contextlib.nullcontext
    compile_on = cfg.compile if cfg.compile is not None else device.type == "cuda"
    fwd = torch.compile(model) if compile_on else model
    optimizers = build_optimizers(raw if not cfg.fsdp else model, cfg)

    step, tokens_seen, elapsed = 0, 0, 0.0
    if resume_ckpt is not None:
        tstate, ostate = load_train_state(resume_ckpt)
        if cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            for opt, sd in zip(optimizers, ostate["optimizers"]):
                set_optimizer_state_dict(model, opt, sd, options=StateDictOptions(full_state_dict=True))
        else:
            if len(ostate["optimizers"]) != len(optimizers):
                raise LmforgeError(f"checkpoint {resume_ckpt} was written with another optimizer setting")
            for opt, sd in zip(optimizers, ostate["optimizers"]):
                opt.load_state_dict(sd)
        data_states = tstate["data"]
        if len(data_states) != info.world_size:
            raise LmforgeError(f"checkpoint {resume_ckpt} was written by {len(data_states)} process(es); resume "
                               f"with the same number (now {info.world_size})")
        data.load_state_dict(data_states[info.rank])
        torch.set_rng_state(ostate["rng"][0])
        step, tokens_seen, elapsed = tstate["step"], tstate["tokens"], tstate["seconds"]

    tokenizer = _load_decoder(Path(tokenizer_dir)) if tokenizer_dir is not None else None
    decoder = tokenizer if info.is_main else None
    token_bytes = None
    if tokenizer is not None:
        from lmforge.evaluation.bpb import token_byte_lengths

        token_bytes = token_byte_lengths(tokenizer, mcfg.vocab_size).to(device)
    logger = RunLogger(out_dir, info.is_main, cfg.tensorboard, resume_step=step)
    if info.is_main:
        write_json(out_dir / "train_config.json", {"train": cfg.to_dict(), "model": mcfg.to_dict(),
                                                   "world_size": info.world_size})
    peak = cfg.peak_flops or peak_flops(device)
    # this invocation's step time and work (a resumed run's earlier part ran elsewhere)
    run_wall = run_cpu = run_flops = 0.0
    flops_per_token = functools.cache(raw.flops_per_token)  # by batch width; it sums the parameters

    def step_mfu(flops: float, wall: float, cpu: float) -> float | None:
        """Achieved over peak FLOP/s for this process's `flops`. On CPU per CPU-second (the peak was measured that
        way), so cores taken by other programs do not count as idle hardware; on GPU per wall-second and device."""
        if not peak or wall <= 0 or cpu <= 0:
            return None
        return flops / cpu / peak if device.type == "cpu" else flops / wall / peak

    def checkpoint() -> Path:
        data_states = [data.state_dict()]
        if info.distributed:
            import torch.distributed as dist

            data_states = [None] * info.world_size
            dist.all_gather_object(data_states, data.state_dict())
        if cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            mstate = get_model_state_dict(model, options=opts)
            osd = [get_optimizer_state_dict(model, o, options=opts) for o in optimizers]
        else:
            mstate, osd = None, [o.state_dict() for o in optimizers]
        path = out_dir / CKPT_SUBDIR / checkpoint_name(step)
        if info.is_main:
            save_train_checkpoint(
                out_dir, step, raw, {"optimizers": osd, "rng": [torch.get_rng_state()]},
                {"tokens": tokens_seen, "seconds": elapsed, "data": data_states, "train_config": cfg.to_dict()},
                tokenizer_dir=tokenizer_dir, state=mstate, keep=cfg.keep_checkpoints)
        barrier(info)
        return path

    last: dict[str, Any] = {}
    if resume_ckpt is not None:
        last.update({k: v for r in logger.rows for k, v in r.items() if k in ("loss", "val_loss", "val_bpb")})

    def run_eval() -> None:
        if val_data is None:
            return
        res = evaluate(raw if not cfg.fsdp else model, val_data, info, autocast, token_bytes)
        last.update(res)
        row.update({k: round(v, 5) for k, v in res.items()})

    def run_samples() -> None:
        if decoder is None or not sample_prompts or cfg.fsdp:
            return
        from lmforge.inference.engine import Engine
        from lmforge.inference.sampling import SamplingParams

        was_training = raw.training
        prompts = sample_prompts[:cfg.num_samples]
        params = SamplingParams(temperature=0.8, top_k=50, max_tokens=cfg.sample_tokens, seed=cfg.seed)
        done = Engine(raw, decoder).generate(prompts, params)  # its own generator: the training RNG is untouched
        raw.train(was_training)
        specials = set(decoder.special_tokens.values())
        texts = [{"prompt": decoder.decode([t for t in p if t not in specials]), "continuation": c[0].text}
                 for p, c in zip(prompts, done)]
        last["samples"] = texts
        with open(out_dir / "samples.jsonl", "a", encoding="utf-8") as f:
            import json

            f.write(json.dumps({"step": step, "samples": texts}) + "\n")
        if cfg.progress:
            from tqdm import tqdm

            for t in texts:
                tqdm.write(f"[sample @ {step}] {t['prompt']!r} -> {t['continuation']!r}")

    bar = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    model.train()
    ckpt_path: Path | None = resume_ckpt
    t_last = t_begin = time.perf_counter()
    stopped_early = False

    def budget_clock() -> float:
        """Seconds since the loop began, rank 0's on every rank, so all ranks schedule and stop alike."""
        now = torch.tensor([time.perf_counter() - t_begin], dtype=torch.float64, device=device)
        if info.distributed:
            import torch.distributed as dist

            dist.broadcast(now, 0)
        return float(now)

    while step < cfg.max_steps:
        t0, c0 = time.perf_counter(), time.process_time()
        # With a time budget the schedule follows whichever runs out first, steps or time, so the learning rate
        # still decays to its floor when the budget (not max_steps) ends the run.
        at = step if not cfg.time_budget_s else max(step, int(cfg.max_steps * budget_clock() / cfg.time_budget_s))
        mult = lr_multiplier(min(at, max(cfg.max_steps - 1, 0)), cfg)
        for opt in optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mult
        micro = [data.next_batch() for _ in range(cfg.grad_accum)]
        # Counted from the batches themselves: SFT batches are padded to their longest conversation, not seq_len.
        step_tokens = sum(x.numel() for x, _ in micro) * info.world_size
        step_flops = sum(flops_per_token(x.shape[1]) * x.numel() for x, _ in micro)
        n_targets = torch.tensor(float(sum(int((y >= 0).sum()) for _, y in micro)), dtype=torch.float64,
                                 device=device)
        all_reduce_sum(n_targets, info)
        n_targets = n_targets.item()
        if n_targets == 0:
            raise LmforgeError(f"step {step + 1}: the batch has no target to learn (every target is -1)")
        scale = info.world_size / n_targets
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for i, (x, y) in enumerate(micro):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = contextlib.nullcontext()
            if info.distributed and not cfg.fsdp and i < cfg.grad_accum - 1:
                sync = model.no_sync()
            elif cfg.fsdp:
                model.set_requires_gradient_sync(i == cfg.grad_accum - 1)
            with sync:
                with autocast():
                    loss = _sum_cross_entropy(fwd, x, y)
                (loss * scale).backward()
            loss_sum += loss.detach().double()
        all_reduce_sum(loss_sum, info)
        step_loss = loss_sum.item() / n_targets
        if not math.isfinite(step_loss):
            raise LmforgeError(f"step {step + 1}: loss is {step_loss}; lower the learning rate (lr/muon_lr)")
        if cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(raw.parameters() if not cfg.fsdp else model.parameters(),
                                                             cfg.grad_clip))
        else:
            grad_norm = None
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        elapsed += dt
        step += 1
        tokens_seen += step_tokens
        tok_s = step_tokens / dt
        dt_cpu = time.process_time() - c0
        run_wall, run_cpu, run_flops = run_wall + dt, run_cpu + dt_cpu, run_flops + step_flops
        mfu = step_mfu(step_flops, dt, dt_cpu)
        row: dict[str, Any] = {"step": step, "loss": round(step_loss, 5), "lr_mult": round(mult, 5),
                               "tokens": tokens_seen, "tokens_per_s": round(tok_s, 1),
                               "elapsed_s": round(elapsed, 3)}
        if grad_norm is not None:
            row["grad_norm"] = round(grad_norm, 4)
        if mfu is not None:
            row["mfu"] = round(mfu, 4)
        last["loss"] = step_loss
        done = step == cfg.max_steps
        if not done and cfg.time_budget_s and budget_clock() >= cfg.time_budget_s:
            done = stopped_early = True  # out of time: finish this step as the last one
        if val_data is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or done):
            run_eval()
        if info.is_main and ((cfg.sample_every and step % cfg.sample_every == 0) or done):
            run_samples()
        if step % cfg.log_every == 0 or done or "val_loss" in row:
            logger.log(row)
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or done:
            ckpt_path = checkpoint()
        if bar is not None:
            bar.update(1)
            post = {"loss": f"{step_loss:.3f}", "tok/s": f"{tok_s:,.0f}"}
            if mfu is not None:
                post["mfu"] = f"{100 * mfu:.1f}%"
            if "val_loss" in row:
                post["val"] = f"{row['val_loss']:.3f}"
            bar.set_postfix(post, refresh=time.perf_counter() - t_last > 0.5)
            t_last = time.perf_counter()
        if stopped_early:
            if info.is_main:
                print(f"[train] time budget of {cfg.time_budget_s:.0f} s reached: stopped at step {step}")
            break
    if bar is not None:
        bar.close()
    plot = logger.plot()
    logger.close()
    summary = {"run_dir": str(out_dir), "checkpoint": str(ckpt_path) if ckpt_path else None, "step": step,
               "loss": last.get("loss"), "val_loss": last.get("val_loss"), "val_bpb": last.get("val_bpb"),
               "tokens": tokens_seen, "seconds": round(elapsed, 2),
               "tokens_per_s": round(tokens_seen / elapsed, 1) if elapsed else None,
               "mfu": round(m, 4) if (m := step_mfu(run_flops, run_wall, run_cpu)) else None,
               "params": raw.num_params(), "loss_plot": str(plot) if plot else None,
               "samples": last.get("samples"), "stopped_early": stopped_early}
    return summary
