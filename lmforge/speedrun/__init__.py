"""`lmforge speedrun`: every stage of the pipeline, end to end, on the embedded default.

The run folder shows the whole system as artifacts on disk, one sub-folder per stage in pipeline order. A stage
whose artifact is complete (its `DONE.json` marker exists) is skipped, so an interrupted speedrun resumes where it
stopped. Each stage calls the same public API that its CLI verb calls: nothing here is special to the demo.

This package holds all of the speedrun's glue, so no stage package knows about the demo: `runner` (the stage table
and its loop), `corpus` (crawl, data, tokenizer, tokenize), `base_model` (pretrain, sample, export: the base
model's files, named `base*`), `assistant` (sft, chat, export_assistant: the final model, the RL one, as the files
a user takes away), `preference` (compare, label, reward, rlhf: learning from simulated preferences),
`benchmarks` (evaluate: the generated stdlib multiple-choice tasks, then SFT vs RL: held-out arithmetic, win
rates, KL), `settings` (the presets: every size, step count and seed, with the reason for each), `plan`
(`--plan`: a preset's stages, tokens and expected time and cost), `report`, `report_preference` and
`report_html` (the report card every run ends with, rebuilt by `lmforge report RUN_DIR`) and `cli` (the verbs).

`--input FILES...` trains on your own documents (text, WARC, JSONL, parquet, folders) instead of crawling the
documentation site; the stages that only make sense on that site (the stdlib multiple-choice tasks) say why they
were skipped.

`--preset smoke` is what CI runs (a few minutes on 2 cores), the default takes about 30 minutes on 2 cores, and
`--preset gpu` / `--preset node` (under `torchrun --nproc-per-node 8`) train a larger model; under torchrun the
training stages share their work over every process and the other stages run on rank 0.
"""

from lmforge.speedrun.context import SpeedrunContext
from lmforge.speedrun.runner import STAGES, Stage, run_speedrun

__all__ = ["STAGES", "SpeedrunContext", "Stage", "run_speedrun"]
