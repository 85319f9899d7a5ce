"""The arithmetic of RL: log-probs under the sampling distribution, advantages (group baseline, leave-one-out,
GAE), KL estimators, and the clipped policy and value losses.

Log-probs. The engine samples from a processed distribution (temperature, top-k, top-p: `sampling.
next_token_logprobs`), and the ratio pi_new / pi_old of the policy gradient is only right if the training forward
scores the sampled token under that same distribution. `token_logprobs` applies the very function the engine
sampled with to the training forward's logits, so at step 0 the recomputed log-probs equal the engine's and the
KL of the policy to itself is exactly 0 (scoring under the raw distribution while sampling from a truncated one
gives a biased ratio and, with k1, a "negative KL").

KL estimators (Schulman, "Approximating KL divergence"), with r = p_ref / p_policy at a token sampled from the
policy: k1 = -log r (unbiased, noisy, negative on single samples), k3 = (r - 1) - log r (unbiased, always >= 0).
"""

from __future__ import annotations

import torch

from lmforge.inference.sampling import SamplingParams, next_token_logprobs


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, params: SamplingParams,
                   vocab_limit: int | None = None, with_entropy: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-prob of each target, entropy of the distribution or None) under the distribution the engine sampled
    from.

    logits (N, V) are the raw model logits at the positions that predict targets (N,). Entropy counts only the
    tokens the sampler could draw (outside them the probability is 0); it is a measurement, computed without
    gradient."""
    logprobs = next_token_logprobs(logits, params, vocab_limit=vocab_limit)
    chosen = logprobs.gather(-1, targets[:, None])[:, 0]
    if not with_entropy:
        return chosen, None
    logprobs = logprobs.detach()
    probs = logprobs.exp()
    entropy = -(probs * logprobs.masked_fill(probs == 0, 0.0)).sum(-1)
    return chosen, entropy


def group_advantages(rewards: torch.Tensor, group: int, leave_one_out: bool = False,
                     normalize_std: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Advantage of each of the (P * group,) responses against its own group (rows grouped prompt by prompt).

    GRPO: reward minus the group mean (optionally divided by the group's std). RLOO: reward minus the mean of
    the OTHER responses of the group, an unbiased baseline (= G/(G-1) times the GRPO advantage). A group whose
    rewards are all equal teaches nothing: its advantages are exactly 0."""
    r = rewards.view(-1, group).float()
    if leave_one_out:
        if group < 2:
            raise ValueError("a leave-one-out baseline needs groups of at least 2")
        baseline = (r.sum(1, keepdim=True) - r) / (group - 1)
    else:
        baseline = r.mean(1, keepdim=True)
    adv = r - baseline
    if normalize_std:
        adv = adv / (r.std(1, keepdim=True, unbiased=False) + eps)
    return adv.view(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (B, T) positions where `mask` is 1 on the policy's actions; positions
    with mask 0 (prompt, forced tool output, padding) are skipped, so a tool's output is part of the environment
    between two actions. The value after a row's last action is 0 (the episode ends there).

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lambda * A_{t+1};  returns = A + V."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        next_value = torch.where(m > 0, values[:, t], next_value)
        next_adv = torch.where(m > 0, a, next_adv)
    return adv, adv + values * mask


def kl_estimates(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k1, k3) per token of KL(policy || reference) at tokens sampled from the policy."""
    log_ratio = ref_logprobs - logprobs
    k1 = -log_ratio
    k3 = torch.expm1(log_ratio) - log_ratio
    return k1, k3


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip: float, n_tokens: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, summed over the masked tokens and divided by `n_tokens` (the batch's token count:
    DAPO's token-level normalisation, so a long response weighs by its tokens, not as one sample); returns (loss,
    number of tokens whose ratio was clipped)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantages
    loss = -(torch.minimum(unclipped, clipped) * mask).sum() / n_tokens
    clipped_count = (((ratio < 1 - clip) | (ratio > 1 + clip)).float() * mask).sum()
    return loss, clipped_count


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float, n_tokens: float) -> torch.Tensor:
    """PPO's value loss: the larger of the plain and the clipped squared error (the value may move at most `clip`
    from its rollout estimate), halved, token-level normalised."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    err = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * (err * mask).sum() / n_tokens
