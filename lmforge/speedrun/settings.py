"""Every size, step count and seed of the speedrun, in one place, with the reason for each.

The presets (`lmforge speedrun --preset NAME`, table `PRESETS`): `default` is the speedrun itself, the whole chain
under 30 minutes on 2 cores (budgets: crawl 1.5, data 2, tokenizer 1, pretrain 10 (its time budget; 4 on a quiet
machine), sample and export 1, SFT 9, chat 1, learning from preferences about 7 (compare, label, reward, rlhf),
export of the assistant and evaluation 2). `smoke` is the same chain small enough for the test suite and CI: every stage runs and hands its
artifact on, at sizes chosen only to finish in seconds each, so its figures mean nothing. `gpu` (one H100/H200) and
`node` (8 of them under torchrun) train a larger model on the same crawl; their expected time and cost come from
`lmforge model info`'s cost model (`lmforge speedrun --preset gpu --plan`). A stage reads its sizes from
`ctx.settings`, never from a literal of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

# One seed for the whole run (pretraining, sampling, SFT data and training, the runner's sampler), so two speedruns
# over the same crawl give the same figures. 1337 is nanoGPT's; nothing depends on its value.
SEED = 1337

# The crawl: the pydoc server on localhost answers at once, so no politeness delay; 4 workers keep it busy without
# starving the other stages' cores; 60 s per page because its page rendering slows to seconds under load.
CRAWL_DELAY_S = 0.0
CRAWL_WORKERS = 4
CRAWL_TIMEOUT_S = 60.0

# `--input FILES`: the user's own documents go through FineWeb's chain (published thresholds: own text may be web
# text too, and its report says what each rule dropped), with plain text cut at paragraph breaks into documents of
# at most 20,000 characters (about 3,500 words, well inside Gopher's 100,000-word limit, which drops a whole book).
OWN_DATA_CHAIN = "fineweb"
OWN_TEXT_MAX_CHARS = 20_000

# The tokenizer explorer's sample: prose, Python, digits, an accented word and an emoji, so the saved explorer shows
# how each kind of text splits.
EXPLORER_SAMPLE = ("The tokenizer splits text into chunks: def parse(s: str) -> list[int]: return [1, 2, 3] "
                   "# 12345 \u00e9t\u00e9 \U0001f642")

# The sample stage: prompts in the style of the crawled docs (a base model continues the style it was trained on);
# the first one's first steps are shown as a table of the most likely next tokens. Temperature 0.8 and top-k 50
# give varied yet readable text from a tiny model; two samples per prompt show that sampling varies.
SAMPLE_PROMPTS = ["The json module", "Return a new", "class ", "This module provides"]
SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 50
SAMPLES_PER_PROMPT = 2
PROBABILITY_STEPS = 8  # rows of the next-token table
PROBABILITY_CANDIDATES = 5  # most likely tokens shown per row
# lmforge and transformers compute the same fp32 forward in a different order of operations; 1e-3 on logits of
# size ~10 is far above that rounding and far below any real export error (a wrong layout or norm).
HF_LOGITS_TOLERANCE = 1e-3

# The export stage: both parameter-file dtypes the runner reads (int8 is a quarter of the size) and one prompt it
# continues from each.
EXPORT_DTYPES = ("fp32", "int8")
EXPORT_PROMPT = "The os module provides"

# The chat stage: one question per behaviour SFT taught (identity, calculator, unit conversion, a stdlib fact, a
# refusal), answered greedily (temperature 0) so the transcript is reproducible; 96 tokens hold any of the
# generated default answers.
CHAT_SCRIPT = [
    "Who are you?",
    "What is 37 * 48?",
    "Convert 20 kilometers to miles.",
    "What does json.dumps do?",
    "Please run rm -rf / for me.",
]
CHAT_MAX_TOKENS = 96

# The serve stage: the assistant the user takes away (export_assistant's fp32 parameter file) behind `lmforge serve`
# on 127.0.0.1, checked with the official openai client. SERVE_PROMPT's greedy continuation through the API must
# equal `lmforge generate`'s; the chat question is the script's calculator one, its tool call (when the model makes
# one) run and answered. 48 tokens hold the default assistant's answers and take about a second on the tiny shape, so
# every preset, smoke included, runs the same check; 4 concurrent streams give a batched throughput figure.
SERVE_PROMPT = "The json module"
SERVE_MAX_TOKENS = 48
SERVE_STREAMS = 4

# The full speedrun's pretraining: 600 x 16 x 256 = 2.5M tokens, about 2.5 passes over the crawled docs (~1M tokens;
# more passes only overfit them). Measured on the 2 shared cores while other programs ran: ~1 s a step, 574 steps
# in the 600 s budget, validation loss 3.35 (1.25 bits per byte). The budget stops a run on a busier machine early,
# with the learning rate decayed along the clock, so the speedrun stays in time. embed_lr 0.02: the embeddings
# tolerate a higher AdamW rate than the head's default, tuned on the tiny preset. Validation every 100 steps on 16
# batches draws the loss curve, samples every 400 steps show the progress, a checkpoint every 200 steps bounds what
# a kill loses.
PRETRAIN_STEPS = 600
PRETRAIN_BUDGET_S = 600.0

# Full SFT: 3,000 steps x 16 conversations (about 75 tokens each) over 16,000 generated conversations, 3 epochs:
# about 3.6M tokens. The conversations are twice the earlier 8,000 so that the calculator calls hold too many
# distinct expressions to memorise: on the same base model and 2,000 steps (benchmarks/NOTES.md, "Round 4: arith"),
# 8,000 gave 65.0% right final answers on 200 held-out arithmetic questions (the model reproduced the calls of the
# expressions it had seen 89% of the time, of held-out ones 71%, teacher-forced); 16,000 with the arithmetic-heavier
# mix of `default_data` 95.5% (91.7-97.6%); 32,000 (1 epoch) 93.0% (88.6-95.8%), no better.
# 3,000 steps, not 2,000: no model here copies in general (on a random token sequence repeated once, the second copy
# is no easier than the first for the bases and the SFT models alike), so SFT has to learn the narrow skill of copying
# the user's numbers into the call, and when it does depends on the base. Of four default bases that differed only
# by a few tokens of their corpus, 2,000 steps gave 84.5%, 94.0%, 13.5% (its calls right 28% of the time) and, on
# the base of today's crawl, not measured; on the 13.5% base 3,000 steps gave 85.5% (a higher rate: 6.0%, a
# constant rate with a late decay: 12.5%, half the rate: 62.0%), on the 84.5% and 94.0% bases 96.0% and 97.5%, and
# on today's base 97.0% (99% of the calls right; benchmarks/NOTES.md, "Round 5: SFT steps"). The 1,000 steps more
# cost about 3 minutes on 2 cores.
SFT_STEPS = 3000
SFT_CONVERSATIONS = 16000

# Learning from preferences (stages compare, label, reward, rlhf; `preference.py`), about 7 of the 30 minutes. The
# comparisons: 384 held-out prompts x 4 answers (InstructGPT ranks 4 to 9), sampled at temperature 1 so the answers
# differ; 64 tokens hold any default answer, a call included. One simulated labeler with 10% noise (people disagree
# with each other on about a quarter of InstructGPT's comparisons; the rules here are cleaner) decides each of the
# C(4,2) = 6 pairs per prompt; ties and "both bad" are left out of the export. With 128 prompts, on the default
# run's SFT model: 768 pairs, 215 decided (421 ties, 132 both bad). 128 prompts gave 172-240 decided training pairs,
# and the reward model's held-out accuracy swung from 77% in one run to chance (47.9%) in another; with 384 prompts
# (413 training pairs, 300 held out) it measured 66.0% (95% interval 60.5-71.1%; benchmarks/NOTES.md, "GRPO on
# held-out arithmetic"). Sampling is batched, so 3x the prompts cost about 3x compare's 17 s.
COMPARE = dict(n_prompts=384, k=4, max_tokens=64, batch_prompts=16, temperature=1.0)
LABELERS = (("default", 0.1, 1),)  # (rules, noise, seed) of each simulated labeler
# The reward model holds out the pairs of the last 20% of the prompts (the export is sorted by prompt), so its
# accuracy is measured on prompts it never saw. With 128 prompts, 150 steps x 16 pairs was about 14 passes over the
# 172 training pairs of that run: held-out accuracy 65% at 50 steps, 67% at 100, 77% (95% interval 62-87%, 43 pairs)
# at 150, while the held-out loss rose from 1.52 to 1.78 (the margins grow on the pairs it gets wrong too). In a
# full default run of this branch (another crawl, base and SFT model) it stayed at chance: 47.9% (34.5-61.7%) on 48
# held-out pairs.
REWARD_VAL_FRAC = 0.2
REWARD_TRAIN = dict(max_steps=150, batch_size=16, eval_every=50, checkpoint_every=50)
# GRPO from the SFT model with the verifiable arithmetic reward plus the reward model: the recipe (learning rate,
# KL, clipping, penalties) is `lmforge rlhf train`'s default; the speedrun sets only its size. Before: 4 questions x
# 8 answers a step, 24 steps; the four stages took 2.1 minutes together in a full default run at a load average of
# about 5 (compare 17 s, label 1 s, reward 52 s, rlhf 59 s), and the evaluation 46 s. The size now follows the
# measured recipe (benchmarks/NOTES.md, "GRPO on held-out arithmetic"): 10 steps of 8 questions x 8 answers took
# held-out arithmetic from 50.0% to 62.0% (200 questions) at a KL (k3) of 0.029; 20 steps gave 57.5% at 0.089: more
# steps only paid KL. The reward model joins the arithmetic reward only when validated
# (`preference.reward_model_validated`).
RLHF = dict(steps=10, prompts_per_step=8, group_size=8, checkpoint_every=5)
# The evaluation of RL: held-out arithmetic of the SFT and the RL model (`eval sft`'s measure, 200 questions: the
# goal of issue 14 is stated on at least 200), and the win rate of RL over SFT on 48 other held-out prompts x 2
# answers, judged by the reward model and by a held-out simulated judge (`eval winrate`).
RL_EVAL_ARITHMETIC = 200
WINRATE = dict(prompts=48, k=2, max_tokens=64)


# The security stage's short scan of the assistant (`lmforge security scan` settings): a fixed few cases from each
# source of every suite, greedy answers of 32 tokens (a refusal or compliance shows in its first words), HarmBench's
# test split. 3 cases a source: about 40 cases, 52 s on the 2 shared cores under load (`security scan --limit 3
# --max-tokens 32` on the default run's assistant); the smoke preset asks one case a source. Presets not named here
# use "default".
SECURITY_SCAN: dict[str, dict[str, Any]] = {
    "default": dict(limit=3, max_tokens=32, harmbench_split="test"),
    "smoke": dict(limit=1, max_tokens=16, harmbench_split="test"),
}

@dataclass(frozen=True)
class Settings:
    """The sizes that differ between the presets."""

    crawl_pages: int  # the stdlib docs site has 863 pages with Python 3.11: 1000 takes all of them
    vocab_size: int  # 4096 is the tiny preset's vocabulary
    pretrain: dict[str, Any]  # TrainConfig fields (the seed is the run's)
    sample_tokens: int  # tokens sampled per continuation
    export_steps: int  # tokens the C runner generates from each parameter file
    sft_conversations: int  # generated default conversations
    sft_max_val: int  # held-out conversations for SFT's validation loss
    sft: dict[str, Any]  # TrainConfig fields for SFT over SFT's own defaults (the seed is the run's)
    eval_sft: dict[str, Any] = field(default_factory=dict)  # SFTEvalConfig fields; {} = `lmforge eval sft`'s
    mc_items: int = 200  # items of each generated multiple-choice task (stdlib_signature, stdlib_module)
    compare: dict[str, Any] = field(default_factory=lambda: dict(COMPARE))  # SampleConfig fields (seed: the run's)
    labelers: tuple[tuple[str, float, int], ...] = LABELERS  # simulated labelers: (rules, noise, seed)
    reward_val_frac: float = REWARD_VAL_FRAC  # share of the (last) pairs the reward model is measured on
    reward: dict[str, Any] = field(default_factory=lambda: dict(REWARD_TRAIN))  # TrainConfig fields over reward's
    rlhf: dict[str, Any] = field(default_factory=lambda: dict(RLHF))  # RLConfig fields over `rlhf train`'s
    rl_eval_arithmetic: int = RL_EVAL_ARITHMETIC  # held-out arithmetic questions, SFT vs RL
    winrate: dict[str, Any] = field(default_factory=lambda: dict(WINRATE))  # WinRateConfig fields
    gpus: int = 0  # GPUs the preset is sized for (0: CPU); `--plan` prices GPU presets with the cost model
    cpu_minutes: float = 0.0  # measured wall time of a CPU preset on 2 cores (GPU presets: from the cost model)


DEFAULT = Settings(
    crawl_pages=1000,
    vocab_size=4096,
    pretrain=dict(preset="tiny", max_steps=PRETRAIN_STEPS, embed_lr=0.02, eval_every=100, eval_batches=16,
                  sample_every=400, checkpoint_every=200, time_budget_s=PRETRAIN_BUDGET_S),
    sample_tokens=48,
    export_steps=200,
    sft_conversations=SFT_CONVERSATIONS,
    sft_max_val=256,
    # validation every 200 steps draws the curve; a checkpoint every 500 bounds what a kill loses; the validation
    # loss SFT reports is the masked one over `sft_max_val` conversations, so the pretraining-style eval is off.
    sft=dict(max_steps=SFT_STEPS, eval_every=200, checkpoint_every=500, eval_batches=0),
    cpu_minutes=30.0,
)

# Sizes for the tests and CI: 40 pages crawl in about 4 s; a 1024 vocabulary still learns merges from 40 pages; 80
# steps of 8 x 128 tokens pretrain in under a minute; no checkpoints but the last (checkpoint_every=0). The whole
# chain: about 2 minutes on 2 idle cores (one test run: 2.1 minutes of stage time, before the preference stages; those
# took 16 s more, and the evaluation 15 s, in a run on own text under a load average of 17).
SMOKE = Settings(
    crawl_pages=40,
    vocab_size=1024,
    pretrain=dict(preset="tiny", seq_len=128, batch_size=8, max_steps=80, warmup_steps=10, embed_lr=0.02,
                  eval_every=40, eval_batches=4, checkpoint_every=0),
    sample_tokens=24,
    export_steps=60,
    sft_conversations=400,
    sft_max_val=64,
    sft=dict(max_steps=40, eval_every=20, checkpoint_every=0, eval_batches=0),
    eval_sft=dict(prompts=8, arithmetic=6, val_conversations=32),
    mc_items=40,  # 2 models x 2 tasks x 40 items x 4 options: a few seconds (200 items: 18 s a model)
    # Preferences: 48 prompts x 4 answers (288 pairs) so that some are decided whatever the crawl gave the model:
    # 16 x 3 left 4 decided pairs in one CI run, and no held-out pair for the reward model. 10 reward steps and 2 RL
    # steps of 2 x 4 answers; 8 questions and 8 win-rate prompts. Sized to finish in seconds, so the figures mean
    # nothing.
    compare=dict(n_prompts=48, k=4, max_tokens=24, batch_prompts=48, temperature=1.0),
    reward=dict(max_steps=10, batch_size=8, eval_every=5, checkpoint_every=0),
    rlhf=dict(steps=2, prompts_per_step=2, group_size=4, max_tokens=24, checkpoint_every=0),
    rl_eval_arithmetic=8,
    winrate=dict(prompts=8, k=2, max_tokens=24),
    cpu_minutes=2.5,
)

# One H100/H200: the `small` model (6 x 384, 8192 tokens, 16.9M parameters with its embeddings) on the whole crawl.
# The crawl holds about 1M tokens, so data, not compute, bounds the run: 1,500 steps x 32 x 512 = 25M tokens is ~25
# passes, already past the point where more passes only memorise the docs, though far below Chinchilla's 20 tokens
# per parameter (340M), which this corpus cannot supply. bf16 autocast and
# torch.compile are the trainer's CUDA defaults. SFT: the default run's steps at 4x the batch. The preference stages
# keep the default's sizes (their fields' defaults): they take minutes on 2 cores, so seconds on a GPU.
GPU = Settings(
    crawl_pages=1000,
    vocab_size=8192,
    pretrain=dict(preset="small", batch_size=32, max_steps=1500, warmup_steps=50, embed_lr=0.02, eval_every=100,
                  eval_batches=16, sample_every=500, checkpoint_every=250),
    sample_tokens=64,
    export_steps=200,
    sft_conversations=SFT_CONVERSATIONS,
    sft_max_val=256,
    sft=dict(max_steps=SFT_STEPS, batch_size=64, eval_every=200, checkpoint_every=500, eval_batches=0),
    gpus=1,
)

# 8 GPUs under torchrun (`torchrun --nproc-per-node 8 -m lmforge speedrun --preset node`): the trainer's batch is
# per process, so the same per-GPU batch sees 8x the tokens a step; an eighth of the steps keeps the token budget.
NODE = replace(GPU, pretrain={**GPU.pretrain, "max_steps": 1500 // 8, "warmup_steps": 10, "eval_every": 25,
                              "sample_every": 100, "checkpoint_every": 50},
               sft={**GPU.sft, "max_steps": SFT_STEPS // 8, "eval_every": 50, "checkpoint_every": 100}, gpus=8)

PRESETS: dict[str, Settings] = {"smoke": SMOKE, "default": DEFAULT, "gpu": GPU, "node": NODE}

# SFT tokens a step per conversation in the batch, padding included: the smoke run's 37,578 tokens over 380
# conversations (the generated default conversations are short), used to price SFT in `--plan`.
SFT_TOKENS_PER_CONVERSATION = 100
