"""The training loop shared by pretraining, SFT and the post-training objectives (reward model, DPO).

    from lmforge.train import TrainConfig, train
    summary = train(cfg, data, val_data, out_dir, init_checkpoint=None, tokenizer_dir=None)

`data` is any batch source: an object with `next_batch() -> (x, y)` (int64 tensors of shape (batch, seq_len) for
this process; `y` holds the next tokens, -1 where no loss is wanted, e.g. SFT's prompt positions and padding),
`state_dict() -> dict` (JSON-able) and `load_state_dict(dict)`; the loader's position is saved with every
checkpoint, which is what makes a resumed run continue exactly. `val_data` is None or a callable returning a fresh
iterable of (x, y) validation batches (the same ones every call). Pretraining uses `ShardBatches` and
`ValidationWindows` from `lmforge.train.loader`; SFT brings its own sources. With `objective` (see `Objective`)
the batches are whatever that objective reads (preference pairs) and it supplies the loss, its metrics and the
evaluation; the rest of the loop (schedule, clipping, checkpoints, resume, logs) is unchanged.

The loss of a step is the mean cross-entropy over every target that is not -1 in the step's global batch (all
micro-batches of all processes): each micro-batch's summed loss is divided by the global count of targets. With
masks, that weighs every supervised token equally, however the tokens fall into rows, micro-batches and ranks, so
K processes compute the same step as one process with K times the batch.

Running `train` again with the same `out_dir` resumes from the newest checkpoint in it (weights, optimizer
moments, data position, step); `init_checkpoint` (a run folder or checkpoint folder) starts a new run from
existing weights instead (SFT from the pretrained model). Under torchrun the function runs in every process; call
`lmforge.train.dist.setup_distributed()` first or let `train` do it.

Returns a JSON-able summary: run_dir, checkpoint, step, loss, val_loss, val_bpb, tokens, seconds (all the run's
steps, over every invocation), params, and this invocation's throughput (`lmforge.train.logging.Throughput`):
steady-state tokens_per_s and mfu against peak_flops (with its peak_source), the warm-up (warmup_steps,
warmup_s, compile_s when compiling) and the time between steps (eval_s, sample_s, checkpoint_s), and wall_s.

On CUDA, float32 matrix products (those autocast leaves in fp32, and all of them with `--dtype float32`) run on
TF32 tensor cores (`torch.set_float32_matmul_precision("high")`): a 10-bit mantissa for the products, fp32
accumulation, several times the fp32 rate; training in bf16 already accepts far coarser products.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch

from lmforge.checkpoint import (CKPT_SUBDIR, checkpoint_name, load_state, load_train_state, load_weights,
                                save_train_checkpoint)
from lmforge.model import GPT, GPTConfig
from lmforge.train.bpb import loss_and_bytes, token_byte_lengths
from lmforge.train.config import TrainConfig
from lmforge.train.dist import DistInfo, all_reduce_sum, barrier, checkpoint_activations, setup_distributed, wrap_model
from lmforge.train.logging import RunLogger, Throughput, require_wandb, resolve_peak
from lmforge.train.optim import build_optimizers
from lmforge.train.schedule import lr_multiplier
from lmforge.train.start import RunStart, decide_start
from lmforge.utils import LmforgeError, remove_stale_temporaries, write_json

Batch = tuple[torch.Tensor, torch.Tensor]
ValSource = Callable[[], Iterable[Batch]]


class BatchSource(Protocol):
    def next_batch(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Objective(Protocol):
    """What a step minimises over the batch source's batches. `NextTokenLoss` (pretraining, SFT) is the default;
    post-training stages (the reward model, DPO) bring their own batches and loss through this, and get the same
    checkpoints, exact resume, metrics.jsonl and plots. A step's loss is the sum of `loss` over its micro-batches
    divided by the sum of `count` (targets, pairs), so every unit weighs the same however batches fall."""

    def prepare_model(self, model: GPT, weights: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """Add the objective's own modules to `model` (before its weights are loaded); return the weights to load
        (a start from a plain model gets the new modules' fresh values added)."""
        ...

    def count(self, batch: Any) -> int: ...

    def rows_and_width(self, batch: Any) -> tuple[int, int]: ...

    def to(self, batch: Any, device: torch.device) -> Any: ...

    def loss(self, forward: Callable, model: GPT, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(summed loss, summed metrics) of a batch on the device: the metrics are logged as sums over `count`."""
        ...

    def evaluate(self, model: GPT, val_data: Any, info: DistInfo, autocast: Any,
                 token_bytes: torch.Tensor | None) -> dict[str, float]: ...


class NextTokenLoss:
    """Pretraining's and SFT's objective: cross-entropy of the next token wherever the target is not -1."""

    def prepare_model(self, model: GPT, weights: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        return weights

    def count(self, batch: Batch) -> int:
        return int((batch[1] >= 0).sum())

    def rows_and_width(self, batch: Batch) -> tuple[int, int]:
        return batch[0].shape[0], batch[0].shape[1]

    def to(self, batch: Batch, device: torch.device) -> Batch:
        return batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)

    def loss(self, forward: Callable, model: GPT, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return forward(batch[0], batch[1], reduction="sum", return_logits=False)[1], {}

    def evaluate(self, model: GPT, val_data: Any, info: DistInfo, autocast: Any,
                 token_bytes: torch.Tensor | None) -> dict[str, float]:
        return evaluate(model, val_data, info, autocast, token_bytes)


@torch.no_grad()
def evaluate(model: torch.nn.Module, val_data: ValSource, info: DistInfo, autocast: Any,
             token_bytes: torch.Tensor | None = None) -> dict[str, float]:
    """Mean validation loss (nats/token) and, given each token's byte length, bits per byte.

    Bits per byte divides the summed loss (in bits) by the UTF-8 bytes the scored tokens stand for, which does not
    depend on how the text was cut into tokens: models with different tokenizers become comparable.
    """
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


@dataclass
class StepResult:
    """What one optimisation step measured: its loss and learning-rate factor, its work and its time."""

    loss: float
    lr_mult: float
    tokens: int  # over every process
    flops: float  # this process's
    seconds: float
    cpu_seconds: float
    grad_norm: float | None
    metrics: dict[str, float]  # the objective's own per-step means (a reward model's accuracy, DPO's margin)


class TrainingRun:
    """One invocation of a training run: the model, its optimizers and data position (restored from the run's
    checkpoint or freshly initialised, as `RunStart` says), and the pieces of the loop `train` spells out: one
    optimisation step, then evaluation, samples, logging and checkpoints after it."""

    def __init__(self, cfg: TrainConfig, start: RunStart, data: BatchSource, val_data: ValSource | None,
                 out_dir: Path, tokenizer_dir: Path | None, sample_prompts: list[list[int]] | None,
                 info: DistInfo, objective: Objective | None = None) -> None:
        self.cfg, self.start, self.data, self.val_data, self.out_dir = cfg, start, data, val_data, out_dir
        self.objective = objective or NextTokenLoss()
        self.tokenizer_dir, self.sample_prompts = tokenizer_dir, sample_prompts
        self.info, self.device = info, info.device
        self.step, self.tokens_seen, self.elapsed = 0, 0, 0.0
        self.last: dict[str, Any] = {}  # newest loss, val_loss, val_bpb and samples, for the summary
        self.checkpoint_path: Path | None = start.resume
        self._build_model()
        if start.resume is not None:
            self._restore(start.resume)
        tokenizer = _load_tokenizer(tokenizer_dir)
        self.decoder = tokenizer if info.is_main else None
        self.token_bytes = token_byte_lengths(tokenizer, self.mcfg.vocab_size).to(self.device) \
            if tokenizer is not None else None
        wandb_config = {"train": cfg.to_dict(), "model": self.mcfg.to_dict()} if cfg.wandb else None
        self.logger = RunLogger(out_dir, info.is_main, cfg.tensorboard, self.step, wandb_config)
        if start.resume is not None:
            self.last.update({k: v for r in self.logger.rows for k, v in r.items()
                              if k in ("loss", "val_loss", "val_bpb")})
        if info.is_main:
            write_json(out_dir / "train_config.json", {"train": cfg.to_dict(), "model": self.mcfg.to_dict(),
                                                       "world_size": info.world_size})
        peak = resolve_peak(cfg.peak_flops, self.device, self.compute_dtype)
        self.throughput = Throughput(peak, per_cpu_second=self.device.type == "cpu")
        self.flops_per_token = functools.cache(self.raw.flops_per_token)  # by batch width; sums the parameters
        self.t_begin = time.perf_counter()

    def _build_model(self) -> None:
        """The model (initialised from the seed, then given the start's weights), its DDP/FSDP wrapper, autocast,
        torch.compile and the optimizers."""
        cfg, mcfg = self.cfg, self.start.model_config
        seq_len = cfg.seq_len or mcfg.block_size
        if seq_len > mcfg.block_size:
            raise LmforgeError(f"--seq-len {seq_len} is longer than the model's block_size {mcfg.block_size}")
        weights = load_state(self.start.weights)[1] if self.start.weights is not None else None
        self.mcfg, self.raw = mcfg, GPT(mcfg)
        weights = self.objective.prepare_model(self.raw, weights)
        if weights is not None:
            load_weights(self.raw, weights, self.start.weights)
        self.raw.to(self.device)
        if cfg.activation_checkpointing:
            checkpoint_activations(self.raw)
        self.model = wrap_model(self.raw, self.info, cfg.fsdp)
        self.params_owner = self.model if cfg.fsdp else self.raw  # what optimizers, clipping and eval see
        use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and self.device.type == "cuda")
        self.compute_dtype = torch.bfloat16 if use_bf16 else torch.float32
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) \
            if use_bf16 and not cfg.fsdp else contextlib.nullcontext
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for fp32 products (see the module docstring)
        self.compiled = cfg.compile if cfg.compile is not None else self.device.type == "cuda"
        self.forward = torch.compile(self.model) if self.compiled else self.model
        self.optimizers = build_optimizers(self.params_owner, cfg, mcfg.n_embd)

    def _restore(self, ckpt: Path) -> None:
        """Optimizer moments, this rank's data position, the RNG state and the counters of a checkpoint."""
        train_state, opt_state = load_train_state(ckpt)
        if self.cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            for opt, sd in zip(self.optimizers, opt_state["optimizers"]):
                set_optimizer_state_dict(self.model, opt, sd, options=StateDictOptions(full_state_dict=True))
        else:
            if len(opt_state["optimizers"]) != len(self.optimizers):
                raise LmforgeError(f"checkpoint {ckpt} was written with another optimizer setting")
            for opt, sd in zip(self.optimizers, opt_state["optimizers"]):
                opt.load_state_dict(sd)
        data_states = train_state["data"]
        if len(data_states) != self.info.world_size:
            raise LmforgeError(f"checkpoint {ckpt} was written by {len(data_states)} process(es); resume "
                               f"with the same number (now {self.info.world_size})")
        self.data.load_state_dict(data_states[self.info.rank])
        torch.set_rng_state(opt_state["rng"][0])
        self.step, self.tokens_seen, self.elapsed = train_state["step"], train_state["tokens"], train_state["seconds"]

    def budget_clock(self) -> float:
        """Seconds since the loop began, rank 0's on every rank, so all ranks schedule and stop alike."""
        now = torch.tensor([time.perf_counter() - self.t_begin], dtype=torch.float64, device=self.device)
        if self.info.distributed:
            import torch.distributed as dist

            dist.broadcast(now, 0)
        return float(now)

    def out_of_time(self) -> bool:
        return bool(self.cfg.time_budget_s) and self.budget_clock() >= self.cfg.time_budget_s

    def _set_learning_rates(self) -> float:
        """Apply the schedule's factor for this step. With a time budget the schedule follows whichever runs out
        first, steps or time, so the rate still decays to its floor when the budget ends the run."""
        cfg = self.cfg
        at = self.step if not cfg.time_budget_s else \
            max(self.step, int(cfg.max_steps * self.budget_clock() / cfg.time_budget_s))
        mult = lr_multiplier(min(at, max(cfg.max_steps - 1, 0)), cfg)
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mult
        return mult

    def optimisation_step(self) -> StepResult:
        """One optimizer step over `grad_accum` micro-batches: the loss is the mean over every target of the
        global batch (see the module docstring), so K processes compute what one process with K times the batch
        would."""
        cfg, info, device = self.cfg, self.info, self.device
        t0, c0 = time.perf_counter(), time.process_time()
        mult = self._set_learning_rates()
        objective = self.objective
        micro = [self.data.next_batch() for _ in range(cfg.grad_accum)]
        # Counted from the batches themselves: SFT batches are padded to their longest conversation, not seq_len.
        shapes = [objective.rows_and_width(b) for b in micro]
        step_tokens = sum(rows * width for rows, width in shapes) * info.world_size
        step_flops = sum(self.flops_per_token(width) * rows * width for rows, width in shapes)
        n_targets = torch.tensor(float(sum(objective.count(b) for b in micro)), dtype=torch.float64, device=device)
        n_targets = all_reduce_sum(n_targets, info).item()
        if n_targets == 0:
            raise LmforgeError(f"step {self.step + 1}: the batch has no target to learn (every target is -1)")
        scale = info.world_size / n_targets
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        metric_sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro):
            batch = objective.to(batch, device)
            with self._gradient_sync(last=i == cfg.grad_accum - 1):
                with self.autocast():
                    loss, metrics = objective.loss(self.forward, self.raw, batch)
                (loss * scale).backward()
            loss_sum += loss.detach().double()
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0) + v.detach().double()
        step_loss = all_reduce_sum(loss_sum, info).item() / n_targets
        step_metrics = {k: all_reduce_sum(v, info).item() / n_targets for k, v in metric_sums.items()}
        if not math.isfinite(step_loss):
            raise LmforgeError(f"step {self.step + 1}: loss is {step_loss}; lower the learning rate (--lr/--muon-lr)")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params_owner.parameters(), cfg.grad_clip)) \
            if cfg.grad_clip > 0 else None
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result = StepResult(step_loss, mult, step_tokens, step_flops, time.perf_counter() - t0,
                            time.process_time() - c0, grad_norm, step_metrics)
        self.step += 1
        self.tokens_seen += result.tokens
        self.elapsed += result.seconds
        self.throughput.add_step(result.tokens, result.flops, result.seconds, result.cpu_seconds)
        self.last["loss"] = step_loss
        return result

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Average gradients across processes only on a step's last micro-batch (DDP's no_sync, FSDP's flag)."""
        if self.cfg.fsdp:
            self.model.set_requires_gradient_sync(last)
        elif self.info.distributed and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def metrics_row(self, r: StepResult) -> dict[str, Any]:
        row: dict[str, Any] = {"step": self.step, "loss": round(r.loss, 5), "lr_mult": round(r.lr_mult, 5),
                               "tokens": self.tokens_seen, "tokens_per_s": round(r.tokens / r.seconds, 1),
                               "elapsed_s": round(self.elapsed, 3)}
        if r.grad_norm is not None:
            row["grad_norm"] = round(r.grad_norm, 4)
        row.update({k: round(v, 5) for k, v in r.metrics.items()})
        if (mfu := self.throughput.mfu(r.flops, r.seconds, r.cpu_seconds)) is not None:
            row["mfu"] = round(mfu, 4)
        return row

    def after_step(self, r: StepResult, done: bool) -> dict[str, Any]:
        """Evaluate, sample, log and checkpoint at their intervals (and all of them on the last step); returns the
        step's metrics row."""
        cfg, step = self.cfg, self.step
        row = self.metrics_row(r)
        if self.val_data is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or done):
            with self.throughput.timed("eval_s"):
                scores = self.objective.evaluate(self.params_owner, self.val_data, self.info, self.autocast,
                                                 self.token_bytes)
            self.last.update(scores)
            row.update({k: round(v, 5) for k, v in scores.items()})
            self.console(f"[eval @ {step}] " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if self.info.is_main and ((cfg.sample_every and step % cfg.sample_every == 0) or done):
            with self.throughput.timed("sample_s"):
                self.write_samples()
        if step % cfg.log_every == 0 or done or "val_loss" in row:
            self.logger.log(row)
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or done:
            with self.throughput.timed("checkpoint_s"):
                self.checkpoint_path = self.save_checkpoint()
        return row

    def console(self, line: str) -> None:
        """A line for the user, printed above the progress bar (tqdm.write keeps the bar intact); rank 0 only,
        and only with the bar on (a quiet run keeps its figures in metrics.jsonl)."""
        if self.info.is_main and self.cfg.progress:
            from tqdm import tqdm

            tqdm.write(line)

    def banner(self) -> str:
        """What a newcomer wants to know before the first step: how big the model is, how much each step learns
        from, where it runs, and what the MFU will be measured against."""
        cfg, info, mcfg = self.cfg, self.info, self.mcfg
        seq_len = cfg.seq_len or mcfg.block_size
        per_step = cfg.batch_size * seq_len * cfg.grad_accum * info.world_size
        n, n_body = self.raw.num_params(), self.raw.num_params(non_embedding=True)
        peak = self.throughput.peak
        peak_text = f"{peak.flops / 1e12:,.3g} TFLOP/s ({peak.source})" if peak.flops else peak.source
        start = f"resuming at step {self.step}" if self.start.resume else \
            f"from {self.start.init_from}" if self.start.init_from else "new model"
        return "\n".join([
            f"[train] {start}: {n / 1e6:,.2f}M parameters ({n_body / 1e6:,.2f}M outside the embedding), "
            f"{mcfg.n_layer} layers, width {mcfg.n_embd}, context {mcfg.block_size}, vocabulary {mcfg.vocab_size}",
            f"[train] {per_step:,} tokens per step = {cfg.batch_size} rows x {seq_len} tokens x {cfg.grad_accum} "
            f"micro-batches x {info.world_size} process(es); {cfg.max_steps:,} steps, optimizer {cfg.optimizer}",
            f"[train] device {self.device}, {torch.get_num_threads()} thread(s), "
            f"{str(self.compute_dtype).removeprefix('torch.')}, compile {'on' if self.compiled else 'off'}"
            f"{', FSDP' if cfg.fsdp else ', DDP' if info.distributed else ''}"
            f"{', activation checkpointing' if cfg.activation_checkpointing else ''}; MFU against {peak_text}"])

    def write_samples(self) -> None:
        """Continue the sample prompts with the engine (its own generator: the training RNG is untouched)."""
        if self.decoder is None or not self.sample_prompts or self.cfg.fsdp:
            return
        from lmforge.inference.engine import Engine
        from lmforge.inference.sampling import SamplingParams

        prompts = self.sample_prompts[:self.cfg.num_samples]
        params = SamplingParams(temperature=0.8, top_k=50, max_tokens=self.cfg.sample_tokens, seed=self.cfg.seed)
        done = Engine(self.raw, self.decoder).generate(prompts, params)
        self.raw.train()
        texts = [dict(zip(("prompt", "continuation"), sample_texts(self.decoder, p, c[0].token_ids)))
                 for p, c in zip(prompts, done)]
        self.last["samples"] = texts
        with open(self.out_dir / "samples.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.step, "samples": texts}) + "\n")
        for t in texts:
            self.console(f"[sample @ {self.step}] {t['prompt']!r} -> {t['continuation']!r}")

    def save_checkpoint(self) -> Path:
        """Weights, optimizer moments, RNG and every rank's data position (gathered to rank 0, which writes)."""
        info, cfg = self.info, self.cfg
        data_states = [self.data.state_dict()]
        if info.distributed:
            import torch.distributed as dist

            data_states = [None] * info.world_size
            dist.all_gather_object(data_states, self.data.state_dict())
        if cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            weights = get_model_state_dict(self.model, options=opts)
            opt_states = [get_optimizer_state_dict(self.model, o, options=opts) for o in self.optimizers]
        else:
            weights, opt_states = None, [o.state_dict() for o in self.optimizers]
        if info.is_main:
            save_train_checkpoint(
                self.out_dir, self.step, self.raw, {"optimizers": opt_states, "rng": [torch.get_rng_state()]},
                {"tokens": self.tokens_seen, "seconds": self.elapsed, "data": data_states,
                 "train_config": cfg.to_dict()},
                tokenizer_dir=self.tokenizer_dir, state=weights, keep=cfg.keep_checkpoints)
        barrier(info)
        return self.out_dir / CKPT_SUBDIR / checkpoint_name(self.step)

    def summary(self, stopped_early: bool) -> dict[str, Any]:
        plot = self.logger.plot()
        self.logger.close()
        return {"run_dir": str(self.out_dir), "checkpoint": str(self.checkpoint_path) if self.checkpoint_path else None,
                "step": self.step, "loss": self.last.get("loss"), "val_loss": self.last.get("val_loss"),
                "val_bpb": self.last.get("val_bpb"), "tokens": self.tokens_seen, "seconds": round(self.elapsed, 2),
                **self.throughput.figures(self.compiled),
                "wall_s": round(time.perf_counter() - self.t_begin, 3), "params": self.raw.num_params(),
                "loss_plot": str(plot) if plot else None, "samples": self.last.get("samples"),
                "stopped_early": stopped_early}


def sample_texts(tok: Any, prompt: list[int], continuation: list[int]) -> tuple[str, str]:
    """A sample's prompt and continuation as text, cut at a character boundary. Byte-level BPE tokens can end
    inside a UTF-8 character, so a prompt of whole tokens decoded alone may end in half a character (printed as
    U+FFFD, and again at the continuation's start); the cut moves back to the character's first byte instead. An
    unfinished last character (the sample ran out of tokens) is left out."""
    specials = set(tok.special_tokens.values())
    head = tok.decode_bytes([t for t in prompt if t not in specials])
    data = head + tok.decode_bytes([t for t in continuation if t not in specials])
    cut = len(head)
    for _ in range(3):  # a UTF-8 character has at most 3 continuation bytes
        if 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:
            cut -= 1
    tail = codecs.getincrementaldecoder("utf-8")("replace").decode(data[cut:], final=False)
    return data[:cut].decode("utf-8", "replace"), tail


def _load_tokenizer(tokenizer_dir: Path | None):
    if tokenizer_dir is None or not Path(tokenizer_dir).is_dir():
        return None
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.load(tokenizer_dir)


def train(cfg: TrainConfig, data: BatchSource, val_data: ValSource | None, out_dir: str | Path,
          init_checkpoint: str | Path | None = None, tokenizer_dir: str | Path | None = None,
          model_config: GPTConfig | None = None, sample_prompts: list[list[int]] | None = None,
          info: DistInfo | None = None, start: RunStart | None = None,
          objective: Objective | None = None) -> dict[str, Any]:
    """Train (or resume training) a GPT; see the module docstring for the contract of every argument.

    `tokenizer_dir` is copied into every checkpoint and, when given, turns on bits per byte and decoded samples
    (of `sample_prompts`, token-id lists, at each sampling interval). `model_config` overrides the config's preset.
    `start` is `decide_start`'s answer when the caller already needed it (pretraining sizes its loader by it).
    `objective` replaces next-token cross-entropy (see `Objective`); `data` then yields that objective's batches.
    """
    out_dir = Path(out_dir)
    require_wandb(cfg.wandb)
    info = info or setup_distributed(cfg.device, cfg.fsdp)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    start = start or decide_start(cfg, out_dir, init_checkpoint, model_config, tokenizer_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if info.is_main:  # what a killed checkpoint write left behind
        remove_stale_temporaries(out_dir)
        remove_stale_temporaries(out_dir / CKPT_SUBDIR)
    torch.manual_seed(cfg.seed)
    run = TrainingRun(cfg, start, data, val_data, out_dir, tokenizer_dir, sample_prompts, info, objective)
    if info.is_main:
        print(run.banner(), flush=True)
    bar = _progress_bar(cfg, info, run.step)
    run.model.train()
    stopped_early, bar_refreshed = False, time.perf_counter()
    while run.step < cfg.max_steps:
        result = run.optimisation_step()
        done = run.step == cfg.max_steps
        if not done and run.out_of_time():
            done = stopped_early = True  # out of time: this step is the last one
        row = run.after_step(result, done)
        if bar is not None:
            bar_refreshed = _update_bar(bar, row, run.throughput, bar_refreshed)
        if stopped_early:
            if info.is_main:
                print(f"[train] time budget of {cfg.time_budget_s:.0f} s reached: stopped at step {run.step}")
            break
    if bar is not None:
        bar.close()
    return run.summary(stopped_early)


def _progress_bar(cfg: TrainConfig, info: DistInfo, step: int):
    if not (info.is_main and cfg.progress):
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)


def _update_bar(bar: Any, row: dict[str, Any], throughput: Throughput, refreshed: float) -> float:
    """Advance the bar by a step and show its figures, redrawn at once after a slow step (tqdm throttles fast
    ones itself). tok/s and MFU are the steady state so far ("warm-up" until the first steady step). Returns the
    time of this update."""
    bar.update(1)
    tps, s = throughput.tokens_per_s(), throughput.steady
    post = {"loss": f"{row['loss']:.3f}", "tok/s": f"{tps:,.0f}" if tps else "warm-up"}
    if tps and (mfu := throughput.mfu(s["flops"], s["wall"], s["cpu"])) is not None:
        post["mfu"] = f"{100 * mfu:.1f}%"
    if "val_loss" in row:
        post["val"] = f"{row['val_loss']:.3f}"
    now = time.perf_counter()
    bar.set_postfix(post, refresh=now - refreshed > 0.5)
    return now
