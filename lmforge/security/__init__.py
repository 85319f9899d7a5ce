"""Security: measure how an lmforge model (or any OpenAI-compatible endpoint on this machine) stands up to the attacks
peculiar to LLMs, and plant / find backdoors in training data.

- `scoring.py`: deterministic, explained verdicts (refusal, canary leak, injected payload), each naming its rule.
- `suites.py`: the attack suites built from the shared red-team data (harmful requests, safe look-alikes, jailbreak
  templates, encodings, system-prompt extraction, indirect prompt injection).
- `targets.py`: where the prompts go: a checkpoint through the engine (batched), or a loopback endpoint.
- `scan.py`: runs suites against a target, attack success rates with bootstrap confidence intervals, JSON + Markdown.
- `poison.py`, `detect.py`, `backdoor.py`: plant a trigger -> payload backdoor in SFT data, measure it, find the
  poisoned rows without the trigger (reference loss, n-gram lift, spectral signature), retrain on the rest.
- `guard.py`: a small injection/jailbreak classifier (hashed character 4-grams, logistic regression) to put in
  front of the model and its tool outputs, scored by balanced accuracy on held-out attacks and hard negatives.
- `cli.py`: `lmforge security scan | poison | detect | guard`.
"""
