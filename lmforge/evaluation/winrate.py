"""`lmforge eval winrate`: how often the RL policy's answer beats the SFT model's, and the KL it paid for that.

Both models answer the same held-out prompts with the same sampling settings and the same seeds (`lmforge rlhf
sample` into `OUT/policy` and `OUT/baseline`, so every comparison can be traced and replayed): sample j of the policy
meets sample j of the baseline on each prompt. Two judges decide each comparison:

- the reward model (`--reward-model`, e.g. the one RL trained against): the higher reward wins; the same answer
  (the same token ids) ties;
- a held-out judge: the simulated labeler (`lmforge.posttrain.simulate`) with a seed of its own, so its noisy
  verdicts are not the ones the reward model was trained on.

A tie (or "both bad") counts as half a win, so a policy judged against itself wins exactly 50%. Each win rate comes
with a 95% Wilson interval over the comparisons (with ties the score's variance is below the Bernoulli one the
interval assumes, so it is conservative). The KL paid is the mean per-token KL(policy || SFT) over the tokens the
policy sampled (tool outputs are forced, not sampled: left out), estimated with k1 = log pi - log pi_ref and k3 =
(r - 1) - log r, r = pi_ref / pi, both under the distribution sampled from (temperature, top-k, top-p applied).
The held-out prompts come from a seed of their own (`prompt_seed`), neither the comparisons' nor `eval sft`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from lmforge.evaluation.configs import WinRateConfig
from lmforge.utils import LmforgeError, atomic_write, write_json

POLICY_DIR, BASELINE_DIR, PROMPTS_FILE, RESULT_FILE = "policy", "baseline", "prompts.jsonl", "winrate.json"
WIN, TIE, LOSS = 1.0, 0.5, 0.0


# ---------------------------------------------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------------------------------------------

def win_rate(scores: list[float]) -> dict[str, Any]:
    """Mean score (1 win, 0.5 tie, 0 loss), its 95% Wilson interval, and the counts."""
    from lmforge.posttrain.reward import wilson_interval

    n = len(scores)
    total = sum(scores)
    low, high = wilson_interval(total, n)  # type: ignore[arg-type]  # a fractional count: ties are halves
    return {"win_rate": round(total / n, 4) if n else 0.5, "ci95": [round(low, 4), round(high, 4)],
            "wins": sum(s == WIN for s in scores), "ties": sum(s == TIE for s in scores),
            "losses": sum(s == LOSS for s in scores), "comparisons": n}


def paired_answers(policy: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> list[tuple[dict, dict, dict]]:
    """(prompt record, policy answer, baseline answer) for answer j of every prompt, refusing samples that were
    not drawn on the same prompts with the same seeds."""
    if len(policy) != len(baseline):
        raise LmforgeError(f"the policy answered {len(policy)} prompts and the baseline {len(baseline)}")
    out = []
    for p, b in zip(sorted(policy, key=lambda r: r["item"]), sorted(baseline, key=lambda r: r["item"])):
        if (p["item"], p["prompt_ids"], p["seed"]) != (b["item"], b["prompt_ids"], b["seed"]):
            raise LmforgeError(f"item {p['item']}: the policy and the baseline saw different prompts or seeds")
        out += [(p, pa, ba) for pa, ba in zip(p["responses"], b["responses"])]
    return out


def judge_by_labeler(pairs: list[tuple[dict, dict, dict]], name: str, noise: float, seed: int) -> list[float]:
    """The simulated labeler's verdict on each (policy, baseline) answer pair, as a score for the policy."""
    from lmforge.posttrain.simulate import FIRST, SECOND, SimulatedLabeler

    labeler = SimulatedLabeler(name, noise, seed)
    scores = []
    for n, (record, ours, theirs) in enumerate(pairs):
        # `item` keys the labeler's noise draw: one per comparison, so two answers of a prompt draw apart
        verdict = labeler.verdict({**record, "item": n, "responses": [ours, theirs]}, 0, 1)
        scores.append(WIN if verdict == FIRST else LOSS if verdict == SECOND else TIE)
    return scores


Scorer = Callable[[list[tuple[list[int], list[int]]]], list[float]]


def judge_by_reward(pairs: list[tuple[dict, dict, dict]], score: Scorer) -> list[float]:
    """The reward of (prompt, answer) (exact sampled ids) decides: higher wins, equal ties. Two answers with the same
    ids tie without a look at their rewards: batched with other rows, the same sequence may score a rounding error
    apart, which would otherwise count as a win or a loss."""
    ours = score([(r["prompt_ids"], a["token_ids"]) for r, a, _ in pairs])
    theirs = score([(r["prompt_ids"], b["token_ids"]) for r, _, b in pairs])
    return [TIE if a["token_ids"] == b["token_ids"] else WIN if x > y else LOSS if x < y else TIE
            for (_, a, b), x, y in zip(pairs, ours, theirs)]


def reward_scorer(checkpoint: str | Path, tokenizer_hash: str, device: str = "cpu") -> Scorer:
    """A reward checkpoint as a scorer of (prompt ids, answer ids): the answer is cut after its first end-of-turn
    token, as RL's reward reads it (the prompt holds end tokens of its own turns); one that would not fit the
    context with the end token the model appends keeps its first tokens."""
    from lmforge.posttrain.reward import RewardModel

    rm = RewardModel.from_checkpoint(checkpoint, device=device)
    if rm.tokenizer.hash != tokenizer_hash:
        raise LmforgeError(f"--reward-model {checkpoint} has another tokenizer than the models it judges")
    end, block = rm.end_id, rm.model.config.block_size

    def score(prompts_and_answers: list[tuple[list[int], list[int]]]) -> list[float]:
        sequences = []
        for prompt, answer in prompts_and_answers:
            answer = list(answer[:answer.index(end) + 1]) if end in answer else list(answer)
            sequence = list(prompt) + answer
            sequences.append(sequence if sequence[-1] == end else sequence[:block - 1])
        return rm.score(sequences).tolist()

    return score


# ---------------------------------------------------------------------------------------------------------------
# KL paid
# ---------------------------------------------------------------------------------------------------------------

def sampled_mask(ids: list[int], tool_output: int, tool_output_end: int) -> list[bool]:
    """Which tokens of a recorded turn the model sampled: all but the tool outputs forced into it (from
    `<|tool_output|>` to `<|tool_output_end|>`, both included)."""
    mask, forced = [], False
    for t in ids:
        forced = forced or t == tool_output
        mask.append(not forced)
        if t == tool_output_end:
            forced = False
    return mask


@torch.no_grad()
def answer_logprobs(model: Any, prompt_ids: list[int], answer_ids: list[int], params: Any,
                    vocab_limit: int | None) -> torch.Tensor:
    """Log-prob of every answer token under the distribution sampled from (`params`), given what came before."""
    from lmforge.inference.sampling import next_token_logprobs

    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(answer_ids)], device=device)
    logits, _ = model(ids[:, :-1])
    logits = logits[0, len(prompt_ids) - 1:]
    logprobs = next_token_logprobs(logits, params, vocab_limit=vocab_limit)
    return logprobs.gather(-1, ids[0, len(prompt_ids):, None])[:, 0].float().cpu()


def kl_paid(policy: str | Path, reference: str | Path, records: list[dict[str, Any]], params: Any,
            device: str = "cpu") -> dict[str, Any]:
    """Mean per-token k1 and k3 of KL(policy || reference) over the policy's sampled answer tokens."""
    from lmforge.checkpoint import load_model
    from lmforge.tokenizer.chat_format import ChatTokens

    pol, _ = load_model(policy, device=device)
    ref, _ = load_model(reference, device=device)
    tok = _tokenizer_of(policy)
    t = ChatTokens.of(tok)
    limit = tok.vocab_size if tok.vocab_size < pol.config.vocab_size else None
    k1_sum = k3_sum = 0.0
    tokens = 0
    for record in records:
        for answer in record["responses"]:
            ids = answer["token_ids"]
            if not ids:
                continue
            keep = torch.tensor(sampled_mask(ids, t.tool_output, t.tool_output_end))
            lp = answer_logprobs(pol, record["prompt_ids"], ids, params, limit)[keep]
            lr = answer_logprobs(ref, record["prompt_ids"], ids, params, limit)[keep] - lp  # log r
            k1_sum += float((-lr).sum())
            k3_sum += float((torch.expm1(lr) - lr).sum())
            tokens += int(keep.sum())
    return {"kl_k1": k1_sum / max(tokens, 1), "kl_k3": k3_sum / max(tokens, 1), "tokens": tokens}


def _tokenizer_of(checkpoint: str | Path) -> Any:
    from lmforge.checkpoint import checkpoint_tokenizer_dir, resolve_checkpoint
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.load(checkpoint_tokenizer_dir(resolve_checkpoint(checkpoint)))


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------

def write_prompts(cfg: WinRateConfig, path: Path) -> None:
    """The held-out prompts as `rlhf sample` reads them (kind and expression kept for the judge)."""
    from lmforge.posttrain.compare import default_prompts

    with atomic_write(path) as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in default_prompts(cfg.prompts, cfg.prompt_seed))


def run_winrate(cfg: WinRateConfig, policy: str | Path, baseline: str | Path, out: str | Path,
                reward_model: str | Path | None = None, device: str = "cpu", log: Any = print) -> dict[str, Any]:
    """Sample both models into `out` (resuming), judge every answer pair, measure the KL; the result is also
    written to `out/winrate.json`."""
    from lmforge.checkpoint import resolve_checkpoint
    from lmforge.posttrain.compare import load_samples, run_sample

    out = Path(out)
    policy, baseline = resolve_checkpoint(policy), resolve_checkpoint(baseline)
    if _tokenizer_of(policy).hash != _tokenizer_of(baseline).hash:
        raise LmforgeError(f"--policy {policy} and --baseline {baseline} use different tokenizers")
    scfg = cfg.sample_config()
    out.mkdir(parents=True, exist_ok=True)
    if not (out / PROMPTS_FILE).is_file():
        write_prompts(cfg, out / PROMPTS_FILE)
    manifests = {}
    for name, ckpt in ((POLICY_DIR, policy), (BASELINE_DIR, baseline)):
        log(f"sampling the {name} ({ckpt})")
        manifests[name] = run_sample(scfg, ckpt, out / name, prompts_path=out / PROMPTS_FILE, device=device, log=log)
    samples = {name: load_samples(out / name) for name in (POLICY_DIR, BASELINE_DIR)}
    pairs = paired_answers(samples[POLICY_DIR], samples[BASELINE_DIR])
    judges = {"held_out_judge": {**win_rate(judge_by_labeler(pairs, cfg.judge, cfg.judge_noise, cfg.judge_seed)),
                                 "judge": f"simulated labeler {cfg.judge!r}, noise {cfg.judge_noise}, "
                                          f"seed {cfg.judge_seed}"}}
    if reward_model is not None:
        scorer = reward_scorer(reward_model, manifests[POLICY_DIR]["settings"]["tokenizer_hash"], device)
        judges["reward_model"] = {**win_rate(judge_by_reward(pairs, scorer)), "judge": str(reward_model)}
    result = {"policy": str(policy), "baseline": str(baseline), "prompts": cfg.prompts, "k": cfg.k,
              "sampling": manifests[POLICY_DIR]["settings"]["sampling"], **judges,
              "kl": kl_paid(policy, baseline, samples[POLICY_DIR], scfg.sampling_params([]), device)}
    write_json(out / RESULT_FILE, result)
    return result


def format_winrate(result: dict[str, Any]) -> str:
    lines = [f"win rate of {result['policy']} over {result['baseline']} ({result['prompts']} held-out prompts x "
             f"{result['k']} answers; ties count half):"]
    for name in ("reward_model", "held_out_judge"):
        if name in result:
            r = result[name]
            lines.append(f"  judged by the {name.replace('_', ' ')}: {100 * r['win_rate']:.1f}% (95% CI "
                         f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}%; {r['wins']} wins, {r['ties']} ties, "
                         f"{r['losses']} losses) [{r['judge']}]")
    kl = result["kl"]
    lines.append(f"  KL paid (policy || baseline, per sampled token, {kl['tokens']} tokens): k1 {kl['kl_k1']:.4f}, "
                 f"k3 {kl['kl_k3']:.4f}")
    return "\n".join(lines)
