"""The report card's sections on learning from preferences: the labels, the reward model's held-out accuracy, the
RL run (its reward against the KL paid, plotted), and the evaluation of RL against SFT (held-out arithmetic of
both, win rates by the reward model and by a held-out judge, the KL). Read from the stage summaries of `label`,
`reward`, `rlhf` and `evaluate` (its `rl` part), each section left out when its stage has not run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.speedrun.report_html import Image, Section, Table
from lmforge.utils import LmforgeError


def pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "n/a"


def interval(ci: Any) -> str:
    ok = isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci)
    return f"{pct(ci[0])} to {pct(ci[1])}" if ok else "n/a"


def preference_section(summaries: dict[str, dict[str, Any]]) -> Section | None:
    """Labels, reward model and RL run: one table, and the reward-versus-KL plot of the RL run."""
    label, reward, rlhf = (summaries.get(name) for name in ("label", "reward", "rlhf"))
    if not (label or reward or rlhf):
        return None
    rows: list[list[Any]] = []
    if label:
        rows.append(["decided pairs exported (ties, both bad, split left out)",
                     f"{label.get('pairs')} ({label.get('tie')}, {label.get('both_bad')}, {label.get('split')})"])
    if reward:
        rows += [["reward model: held-out pairwise accuracy", f"{pct(reward.get('accuracy'))} (95% interval "
                  f"{interval(reward.get('accuracy_ci95'))}, {reward.get('val_pairs')} pairs of held-out prompts)"],
                 ["reward model: training pairs, steps", f"{reward.get('train_pairs')}, {reward.get('step')}"]]
    if rlhf:
        first, last = (rlhf.get(f"{when}_step_reward", float("nan")) for when in ("first", "last"))
        rewards = " + ".join(rlhf.get("rewards") or ["arithmetic", "reward_model"]).replace("_", " ")
        rows += [[f"RL (GRPO, {rewards}): steps", str(rlhf.get("step"))],
                 ["RL mean reward: first step -> last step", f"{first:.3f} -> {last:.3f}"],
                 ["RL KL to the SFT model at the last step (k3, nats/token)", f"{rlhf.get('last_step_kl_k3', 0):.4f}"]]
        if rlhf.get("reward_model_verdict"):
            rows.append(["reward model in the RL reward?", f"reward model {rlhf['reward_model_verdict']}"])
    blocks: list[Any] = [Table(["measure", "value"], rows)]
    plot = Path(str((rlhf or {}).get("reward_vs_kl_plot") or ""))
    if rlhf and plot.is_file():
        blocks.append(Image("RL: mean reward against the KL paid, per step", plot.read_bytes()))
    return Section("Learning from preferences: labels, reward model, RL", blocks)


def rl_evaluation_section(summary: dict[str, Any]) -> Section | None:
    """The `evaluate` stage's SFT-versus-RL measures."""
    rl = summary.get("rl")
    if rl is None:
        return None
    if not isinstance(rl, dict) or not isinstance(rl.get("arithmetic"), dict) or \
            not isinstance(rl.get("win_rate"), dict):
        raise LmforgeError("the evaluate stage's summary has a damaged `rl` part (no arithmetic or win rates)")
    rows = [[f"held-out arithmetic, final answer right ({model.upper()})", f"{a.get('right')}/{a.get('questions')} "
             f"= {pct(a.get('accuracy'))} (95% interval {interval(a.get('ci95'))})"]
            for model, a in rl["arithmetic"].items()]
    for judge, w in rl["win_rate"].items():
        rows.append([f"win rate of RL over SFT, judged by the {judge.replace('_', ' ')}",
                     f"{pct(w.get('win_rate'))} (95% interval {interval(w.get('ci95'))}; {w.get('wins')} wins, "
                     f"{w.get('ties')} ties, {w.get('losses')} losses)"])
    kl = rl.get("kl", {})
    rows.append(["KL paid (RL || SFT, per sampled token, on the win-rate answers)",
                 f"k1 {kl.get('kl_k1', float('nan')):.4f}, k3 {kl.get('kl_k3', float('nan')):.4f} over "
                 f"{kl.get('tokens')} tokens"])
    reward = rl.get("reward_model", {})
    rows.append(["reward model: held-out pairwise accuracy", f"{pct(reward.get('accuracy'))} (95% interval "
                 f"{interval(reward.get('accuracy_ci95'))})"])
    return Section("Evaluation: SFT vs RL", [Table(["measure", "value"], rows),
                                               "Ties count as half a win; a model against itself wins 50%."])
