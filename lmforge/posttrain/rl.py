"""Reinforcement learning on the assistant: GRPO/RLOO (a group baseline, no value model) and PPO (a value head,
GAE), both with PPO's clipped ratio and several inner epochs per batch of rollouts.

    from lmforge.posttrain.rl import RLConfig, run_rl
    summary = run_rl(RLConfig(algo="grpo", steps=60), checkpoint="runs/sft", out_dir="runs/rl")

One step:
1. Rollouts (`rl_rollout.rollout_group`): `prompts_per_step` arithmetic questions (the default SFT data's
   generator, seeds the evaluation never uses), `group_size` responses each, in one batched engine session; the
   calculator runs as in `ChatSession` and its output is forced into the cache.
2. Rewards (`rl_rewards`): the sum of the reward functions over each response's sampled ids and final text.
3. Scoring: no-grad forwards of the policy and of the frozen reference (the starting checkpoint) over exactly
   the sampled ids, minibatch by minibatch, scored under the distribution sampled from
   (`rl_losses.token_logprobs`), the head only at the sampled positions, each group's shared prompt run once
   (`rl_forward`, also in the training forward). The largest gap between these "old" log-probs and the engine's
   is logged (`logprob_mismatch`): it must stay at rounding level. GRPO skips the policy pass for its first minibatch,
   whose first training forward (before any update) is the same forward and supplies them.
4. Advantages. GRPO: reward minus the group mean (RLOO: leave-one-out mean; std-normalisation optional), the same
   for every token of the response; the KL to the reference (k3) is a loss term weighted by `kl_coef`. PPO: the
   per-token penalty -kl_coef * (log pi - log pi_ref) plus the reward at the last token, through GAE with a value
   head (a linear layer on the policy's final hidden state at each position); advantages whitened.
5. `epochs` passes over the batch in minibatches of `minibatch_rows` responses: clipped ratio loss, token-level
   normalised (sum over all the minibatch's action tokens / their count), plus the value loss for PPO.

Only sampled tokens are trained on; prompt, tool outputs and padding are masked out. Every step logs mean reward
(and each reward function's mean), KL to the reference (k1 and k3), entropy, response length, clip fraction,
finished share, to metrics.jsonl and TensorBoard (`RunLogger`, as pretraining); checkpoints in the run folder
resume the run (weights, optimizer, value head, step; a step's prompts and sampling seed are functions of the step);
at the end `reward_vs_kl.png` plots the mean reward against the KL paid.
"""

from __future__ import annotations

import copy
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from lmforge.inference.sampling import SamplingParams
from lmforge.posttrain import rl_losses as L
from lmforge.posttrain.rl_config import RLConfig
from lmforge.posttrain.rl_forward import Batch, build_batch, frozen, sequence_logprobs
from lmforge.posttrain.rl_rewards import RewardFn, build_rewards
from lmforge.posttrain.rl_rollout import Rollout, rollout_group
from lmforge.train.optim import fused_adamw
from lmforge.utils import LmforgeError, atomic_write, write_json


# ---------------------------------------------------------------------------------------------------------------
# Prompts and rewards
# ---------------------------------------------------------------------------------------------------------------


def arithmetic_prompts(tok: Any, n: int, seed: int, step: int) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Step `step`'s questions: the default data's arithmetic generator with a seed of its own per step, from the
    training side of its expression split (`is_heldout_expression`), so no evaluation question is ever a prompt."""
    from lmforge.posttrain.default_data import arithmetic_questions
    from lmforge.tokenizer.chat_format import render_for_completion

    examples = arithmetic_questions(n, seed * 1_000_003 + 7919 * (step + 1), heldout=False)
    return [render_for_completion(tok, [{"role": "user", "content": e["question"]}]) for e in examples], examples


def score_rollouts(rollouts: list[Rollout], rewards: list[tuple[str, RewardFn]]) -> tuple[torch.Tensor, dict]:
    """(total reward per response, mean of each reward function)."""
    parts = {name: [fn(r.prompt_ids, r.response_ids, r.completion, r.example) for r in rollouts]
             for name, fn in rewards}
    total = torch.tensor([sum(vals) for vals in zip(*parts.values())], dtype=torch.float32)
    return total, {f"reward_{name}": sum(v) / len(v) for name, v in parts.items()}


# ---------------------------------------------------------------------------------------------------------------
# The training run
# ---------------------------------------------------------------------------------------------------------------


class RLRun:
    """The policy, its frozen reference, the optional value head, the optimizer and the step; one `step()` is one
    round of rollouts and updates."""

    def __init__(self, cfg: RLConfig, checkpoint: str | Path, out_dir: str | Path,
                 extra_rewards: list[tuple[str, RewardFn]] | None = None) -> None:
        from lmforge.checkpoint import (checkpoint_tokenizer_dir, load_model, load_train_state, resolve_checkpoint,
                                        train_checkpoints)
        from lmforge.inference.engine import Engine
        from lmforge.inference.tools import default_tools
        from lmforge.tokenizer import Tokenizer
        from lmforge.tokenizer.chat_format import ChatTokens

        self.cfg, self.out_dir = cfg, Path(out_dir)
        saved = train_checkpoints(self.out_dir)
        state, opt_state = load_train_state(saved[-1]) if saved else ({}, {})
        if saved and state.get("algo") != cfg.algo:
            raise LmforgeError(f"--out {self.out_dir} holds a {state.get('algo')} run; this is --algo {cfg.algo}")
        self.base = Path(state["init_checkpoint"]) if saved else resolve_checkpoint(checkpoint)
        self.tok_dir = checkpoint_tokenizer_dir(self.base)
        self.tok = Tokenizer.load(self.tok_dir)
        self.tokens = ChatTokens.of(self.tok)
        self.policy, _ = load_model(saved[-1] if saved else self.base, device=cfg.device)
        self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        if saved:
            self.reference, _ = load_model(self.base, device=cfg.device)
            self.reference.requires_grad_(False)
        self.engine = Engine(self.policy, self.tok)
        self.params = cfg.sampling_params()
        self.tools = {"calculator": default_tools()["calculator"]}
        self.rewards = build_rewards(cfg.rewards, self.tokens.end, cfg.unfinished_penalty, cfg.reward_model,
                                     cfg.device, tokenizer=self.tok, tool_call_weight=cfg.tool_call_weight
                                     ) + (extra_rewards or [])
        self.value_head = None
        trained = list(self.policy.parameters())
        if cfg.algo == "ppo":
            self.value_head = torch.nn.Linear(self.policy.config.n_embd, 1).to(cfg.device)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
            trained += list(self.value_head.parameters())
        self.optimizer = fused_adamw(trained, torch.device(cfg.device).type, lr=cfg.lr, betas=(0.9, 0.95),
                                     weight_decay=0.0)
        if saved:
            self.optimizer.load_state_dict(opt_state["optimizer"])
            if self.value_head is not None:
                self.value_head.load_state_dict(opt_state["value_head"])
        self.step_done = int(state.get("step", 0))
        self.out_dir.mkdir(parents=True, exist_ok=True)  # only once everything it needs has loaded

    # -- one step ------------------------------------------------------------------------------------------

    def rollouts(self, step: int) -> list[Rollout]:
        prompts, examples = arithmetic_prompts(self.tok, self.cfg.prompts_per_step, self.cfg.seed, step)
        params = SamplingParams(**{**vars(self.params), "seed": self.cfg.seed * 1_000_003 + step})
        self.policy.eval()
        return rollout_group(self.engine, prompts, examples, params, self.tools, self.cfg.max_tool_calls)

    def minibatches(self, rows: int) -> list[list[torch.Tensor]]:
        """Each epoch's minibatches (row indices), fixed by the seed and the step; with `group_minibatches` the
        groups are shuffled and each keeps its rows together (rows are laid out group by group)."""
        gen = torch.Generator().manual_seed(self.cfg.seed + self.step_done)
        group = self.cfg.group_size if self.cfg.group_minibatches else 1

        def shuffled() -> torch.Tensor:
            return (torch.randperm(rows // group, generator=gen)[:, None] * group + torch.arange(group)).flatten()

        return [list(shuffled().split(self.cfg.minibatch_rows)) for _ in range(self.cfg.epochs)]

    def score(self, batch: Batch, parts: list[torch.Tensor], deferred: bool = False) -> dict[str, torch.Tensor]:
        """The reference's and the policy's old log-probs, entropies (and values) of every row, computed part by
        part over `parts` (the first epoch's minibatches: every pass over a set of rows then lays it out as that
        minibatch's training forward does, so old, reference and training log-probs agree bit for bit). With
        `deferred` the policy skips the first part: its first training forward, before any update, is this very
        forward and fills them in (`update`), so with one minibatch per epoch GRPO runs no separate policy pass."""
        vocab_limit, (B, T) = self.engine.vocab_limit, batch.mask.shape
        out = {"ref": torch.zeros(B, T), "old": torch.zeros(B, T), "entropy": torch.zeros(B, T)}
        if self.value_head is not None:
            out["values"] = torch.zeros(B, T)
        for i, idx in enumerate(parts):
            part = batch.rows(idx)
            width = part.x.size(1)
            with frozen(self.reference):
                out["ref"][idx, :width], _, _ = sequence_logprobs(self.reference, part, self.params, vocab_limit,
                                                                  with_entropy=False)
            if deferred and i == 0:
                continue
            with frozen(self.policy, self.value_head):
                old, ent, values = sequence_logprobs(self.policy, part, self.params, vocab_limit, self.value_head)
            out["old"][idx, :width], out["entropy"][idx, :width] = old, ent
            if values is not None:
                out["values"][idx, :width] = values
        return out

    def advantages(self, batch: Batch, scored: dict[str, torch.Tensor], rewards: torch.Tensor) -> torch.Tensor:
        """Per-token advantages (B, T), 0 outside the policy's tokens."""
        cfg, mask = self.cfg, batch.mask
        if cfg.algo == "grpo":
            adv = L.group_advantages(rewards, cfg.group_size, cfg.leave_one_out, cfg.std_normalize)
            return adv[:, None] * mask
        token_rewards = -cfg.kl_coef * (scored["old"] - scored["ref"]) * mask
        last = (mask * torch.arange(mask.size(1))).argmax(1)  # each row's last action
        token_rewards[torch.arange(mask.size(0)), last] += rewards
        adv, returns = L.gae(token_rewards, scored["values"], mask, cfg.gamma, cfg.lam)
        scored["returns"] = returns
        n = mask.sum().clamp_min(1)
        mean = (adv * mask).sum() / n
        std = (((adv - mean) * mask) ** 2 / n).sum().sqrt()
        return (adv - mean) / (std + 1e-8) * mask

    def update(self, batch: Batch, scored: dict[str, torch.Tensor], adv: torch.Tensor,
               order: list[list[torch.Tensor]], deferred: bool = False) -> dict[str, float]:
        """`epochs` passes of minibatch updates in `order`; returns the mean loss and the clipped share of tokens.
        deferred: the first minibatch's old log-probs and entropies are still to be filled in (`score`)."""
        cfg = self.cfg
        self.policy.train()
        losses, clipped, seen = [], 0.0, 0.0
        for epoch, minibatches in enumerate(order):
            for i, idx in enumerate(minibatches):
                mb = batch.rows(idx)
                width = mb.x.size(1)
                fill = deferred and epoch == 0 and i == 0
                n_tokens = mb.mask.sum().clamp_min(1)
                lp, ent, values = sequence_logprobs(self.policy, mb, self.params, self.engine.vocab_limit,
                                                    self.value_head, with_entropy=fill)
                if fill:  # no update yet: this forward is the old policy's
                    scored["old"][idx, :width], scored["entropy"][idx, :width] = lp.detach(), ent
                loss, n_clipped = L.clipped_policy_loss(lp, scored["old"][idx, :width], adv[idx, :width], mb.mask,
                                                        cfg.clip, n_tokens)
                if cfg.algo == "grpo" and cfg.kl_coef > 0:
                    _, k3 = L.kl_estimates(lp, scored["ref"][idx, :width])
                    loss = loss + cfg.kl_coef * (k3 * mb.mask).sum() / n_tokens
                if values is not None:
                    loss = loss + cfg.vf_coef * L.clipped_value_loss(values, scored["values"][idx, :width],
                                                                     scored["returns"][idx, :width], mb.mask,
                                                                     cfg.value_clip, n_tokens)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    params = [p for g in self.optimizer.param_groups for p in g["params"]]
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                self.optimizer.step()
                losses.append(float(loss.detach()))
                clipped += float(n_clipped)
                seen += float(mb.mask.sum())
        return {"loss": sum(losses) / len(losses), "clip_frac": clipped / max(seen, 1.0)}

    def step(self) -> dict[str, Any]:
        """One round: rollouts, rewards, scoring, advantages, updates; returns the step's metrics row."""
        t0 = time.perf_counter()
        rollouts = self.rollouts(self.step_done)
        t_rollout = time.perf_counter() - t0
        rewards, parts = score_rollouts(rollouts, self.rewards)
        batch = build_batch(rollouts, self.tokens.pad)
        order = self.minibatches(len(rollouts))
        # GRPO's advantages need no old log-probs, so its first minibatch's come from its first training forward;
        # PPO's token rewards and values need every row scored before the updates.
        deferred = self.cfg.algo == "grpo"
        scored = self.score(batch, order[0], deferred)
        adv = self.advantages(batch, scored, rewards)
        metrics = self.update(batch, scored, adv, order, deferred)
        mask = batch.mask
        n = mask.sum().clamp_min(1)
        k1, k3 = L.kl_estimates(scored["old"], scored["ref"])
        self.step_done += 1
        sampled = int(mask.sum())
        return {"step": self.step_done, "reward": float(rewards.mean()), **parts,
                "kl_k1": float((k1 * mask).sum() / n), "kl_k3": float((k3 * mask).sum() / n),
                "entropy": float((scored["entropy"] * mask).sum() / n),
                "response_len": sampled / len(rollouts),
                "finished": sum(r.finish_reason == "stop" for r in rollouts) / len(rollouts),
                "tool_calls": sum(r.tool_calls for r in rollouts) / len(rollouts),
                "logprob_mismatch": float(((scored["old"] - batch.engine).abs() * mask).max()),
                **metrics, "rollout_tokens_per_s": sampled / max(t_rollout, 1e-9),
                "seconds": round(time.perf_counter() - t0, 3)}

    # -- persistence ---------------------------------------------------------------------------------------

    def save(self) -> Path:
        from lmforge.checkpoint import save_train_checkpoint

        opt_state = {"optimizer": self.optimizer.state_dict(),
                     "value_head": self.value_head.state_dict() if self.value_head is not None else {}}
        train_state = {"algo": self.cfg.algo, "init_checkpoint": str(self.base), "config": asdict(self.cfg)}
        return save_train_checkpoint(self.out_dir, self.step_done, self.policy, opt_state, train_state,
                                     tokenizer_dir=self.tok_dir, keep=2)


def plot_reward_vs_kl(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """reward_vs_kl.png: each step's mean reward against its KL to the reference (k3), coloured by step."""
    rows = [r for r in rows if "reward" in r and "kl_k3" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    points = ax.scatter([r["kl_k3"] for r in rows], [r["reward"] for r in rows], c=[r["step"] for r in rows],
                        cmap="viridis", s=14)
    # A single step's mean reward depends on which questions it drew; the running mean over 5 steps shows the trend.
    k = min(5, len(rows))
    windows = [rows[i - k + 1:i + 1] for i in range(k - 1, len(rows))]
    ax.plot([sum(r["kl_k3"] for r in w) / k for w in windows], [sum(r["reward"] for r in w) / k for w in windows],
            lw=1.5, color="black", label=f"running mean over {k} steps")
    ax.legend(loc="best")
    fig.colorbar(points, ax=ax, label="step")
    ax.set_xlabel("KL(policy || reference), k3 estimate (nats/token)")
    ax.set_ylabel("mean reward")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def run_rl(cfg: RLConfig, checkpoint: str | Path, out_dir: str | Path,
           extra_rewards: list[tuple[str, RewardFn]] | None = None, progress: bool = True) -> dict[str, Any]:
    """Train `checkpoint` with RL into `out_dir` (resuming from its newest checkpoint); returns a summary."""
    from lmforge.train.logging import RunLogger
    from lmforge.utils import remove_stale_temporaries

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    out = Path(out_dir)
    if out.is_dir():
        remove_stale_temporaries(out)
    run = RLRun(cfg, checkpoint, out, extra_rewards)
    logger = RunLogger(out, enabled=True, tensorboard=True, resume_step=run.step_done)
    t0, last = time.perf_counter(), {}
    try:
        while run.step_done < cfg.steps:
            last = run.step()
            logger.log(last)
            if progress:
                print(f"rl step {last['step']}/{cfg.steps}: reward {last['reward']:.3f} kl_k3 {last['kl_k3']:.4f} "
                      f"entropy {last['entropy']:.3f} len {last['response_len']:.1f} "
                      f"clip {last['clip_frac']:.3f} ({last['seconds']:.1f} s)", file=sys.stderr)
            if run.step_done == cfg.steps or (cfg.checkpoint_every and run.step_done % cfg.checkpoint_every == 0):
                run.save()
    finally:
        logger.close()
    plot = plot_reward_vs_kl(logger.rows, out / "reward_vs_kl.png")
    from lmforge.checkpoint import train_checkpoints

    summary = {"run_dir": str(out), "checkpoint": str(train_checkpoints(out)[-1]) if train_checkpoints(out) else None,
               "step": run.step_done, "base_checkpoint": str(run.base), "last": last,
               "reward_vs_kl_plot": str(plot) if plot else None, "seconds": round(time.perf_counter() - t0, 2)}
    write_json(out / "rl_summary.json", summary)
    return summary
