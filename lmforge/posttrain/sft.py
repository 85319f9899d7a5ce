"""Supervised fine-tuning: the pretrained model continues training on conversations, learning only the assistant.

    from lmforge.posttrain.sft import SFTConfig, run_sft
    summary = run_sft(SFTConfig(), checkpoint="runs/pretrain", out_dir="runs/sft", data=["chat.jsonl"])

It reuses the pretraining loop (`lmforge.train.train`) unchanged: checkpoints, exact resume, validation, logs and
samples all come from there. What SFT adds is the data side:

- each conversation is rendered by `chat_format.render_conversation`; targets are -1 wherever the mask is 0, so the
  loss covers only the assistant's tokens, tool calls and `<|end|>`;
- ONE conversation per row, padded with `<|pad|>` (targets -1). The model has no document mask (attention is
  plain causal), so packing several conversations into a row would let each attend to the unrelated ones before
  it: training would then see contexts that inference never produces. Padding costs compute, so rows are grouped
  by length (conversations are shuffled, cut into groups of several batches, sorted by length inside a group and
  batched), and each batch is only as long as its longest row, rounded up to a multiple of 16. On the default data
  this keeps the share of padding small (`padding_frac` in the summary);
- the batch order is a pure function of (seed, epoch, batch index), and the batch index is what a checkpoint
  stores, so a resumed run sees exactly the batches the uninterrupted run would have seen;
- held-out conversations (a fraction of the data, or `--val-data` files) give the masked validation loss.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from lmforge.posttrain.configs import SFTConfig
from lmforge.posttrain.refusal_data import training_refusal_record
from lmforge.tokenizer.chat_format import ChatTokens, prompt_of, render_conversation, render_for_completion
from lmforge.train.loader import LengthGroupedBatches
from lmforge.utils import LmforgeError, write_json

Example = tuple[list[int], list[int]]  # (ids, loss mask) of one conversation


def encode_examples(tok: Any, conversations: Iterable[list[dict[str, Any]]], max_tokens: int,
                    stats: dict[str, int] | None = None) -> list[Example]:
    """Render conversations; cut those longer than max_tokens, drop those with nothing left to learn."""
    stats = stats if stats is not None else {}
    out: list[Example] = []
    for msgs in conversations:
        ids, mask = render_conversation(tok, msgs)
        if len(ids) > max_tokens:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
            stats["truncated"] = stats.get("truncated", 0) + 1
        if sum(mask[1:]) == 0:
            stats["dropped_no_target"] = stats.get("dropped_no_target", 0) + 1
            continue
        out.append((ids, mask))
    return out


def collate(examples: list[Example], pad_id: int, pad_multiple: int = 16, max_len: int | None = None):
    """(x, y) int64 tensors: one conversation per row, y = next token where its mask is 1, else -1."""
    import torch

    T = max(len(ids) - 1 for ids, _ in examples)
    T = -(-T // pad_multiple) * pad_multiple
    if max_len is not None:
        T = min(T, max_len)
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), -1, dtype=torch.long)
    for r, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        ids_t = torch.tensor(ids, dtype=torch.long)
        x[r, :n] = ids_t[:-1]
        y[r, :n] = torch.where(torch.tensor(mask[1:], dtype=torch.bool), ids_t[1:], -1)
    return x, y


class SFTBatches(LengthGroupedBatches):
    """Length-grouped batches of whole conversations, in an order fixed by (seed, epoch); a `BatchSource`."""

    what = "conversations"

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, seed: int = 0,
                 group_batches: int = 16, pad_multiple: int = 16, max_len: int | None = None) -> None:
        if not examples:
            raise LmforgeError("SFT has no training conversation")
        super().__init__([len(ids) for ids, _ in examples], batch_size, seed, group_batches)
        self.examples, self.pad_id, self.pad_multiple, self.max_len = examples, pad_id, pad_multiple, max_len

    def next_batch(self):
        rows = self.next_rows()
        return collate([self.examples[i] for i in rows], self.pad_id, self.pad_multiple, self.max_len)

    def padding_frac(self) -> float:
        """Share of padded positions over one epoch (what one-conversation-per-row costs)."""
        total = real = 0
        for rows in self.epoch_batches(0):
            lens = [len(self.examples[i][0]) - 1 for i in rows]
            T = -(-max(lens) // self.pad_multiple) * self.pad_multiple
            total += T * len(rows)
            real += sum(lens)
        return 1 - real / total


def val_batches(examples: list[Example], batch_size: int, pad_id: int, pad_multiple: int = 16,
                max_len: int | None = None) -> Callable[[], Iterable[Any]]:
    """The held-out conversations as fixed, length-sorted batches (the same every call)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    groups = [[examples[i] for i in order[j:j + batch_size]] for j in range(0, len(order), batch_size)]
    return lambda: (collate(g, pad_id, pad_multiple, max_len) for g in groups)


def load_sft_conversations(data: list[str] | None, cfg: SFTConfig, out_dir: Path) -> list[list[dict[str, Any]]]:
    """Conversations from files, or the generated default (saved into the run folder so it can be inspected)."""
    if data:
        from lmforge.posttrain.datasets import load_conversations

        convs, _ = load_conversations(list(data))
        return convs
    from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations, write_jsonl

    convs = list(generate_default_conversations(DefaultDataConfig(n=cfg.default_conversations, seed=cfg.data_seed)))
    path = out_dir / "sft_data.jsonl"
    if not path.is_file():
        write_jsonl(iter(convs), str(path))
    return convs


def run_sft(cfg: SFTConfig, checkpoint: str | Path, out_dir: str | Path, data: list[str] | None = None,
            val_data: list[str] | None = None) -> dict[str, Any]:
    """Fine-tune `checkpoint` on conversations; running again with the same out_dir resumes exactly."""
    from lmforge.checkpoint import checkpoint_tokenizer_dir, load_config, resolve_checkpoint
    from lmforge.tokenizer import Tokenizer
    from lmforge.train import train
    from lmforge.train.lora import finish_lora, lora_objective
    from lmforge.train.trainer import NextTokenLoss

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = resolve_checkpoint(checkpoint)
    tok_dir = checkpoint_tokenizer_dir(base)
    tok = Tokenizer.load(tok_dir)
    tokens = ChatTokens.of(tok)
    mcfg = load_config(base)
    tcfg = cfg.train
    max_tokens = mcfg.block_size + 1  # x and y are the conversation shifted by one

    convs = load_sft_conversations(data, cfg, out_dir)
    rng = random.Random(cfg.data_seed)
    if val_data:
        from lmforge.posttrain.datasets import load_conversations

        train_convs, (val_convs, _) = convs, load_conversations(list(val_data))
    else:
        order = list(range(len(convs)))
        rng.shuffle(order)
        n_val = min(cfg.max_val, max(1, int(len(convs) * cfg.val_frac))) if len(convs) > 1 else 0
        val_convs = [convs[i] for i in order[:n_val]]
        train_convs = [convs[i] for i in sorted(order[n_val:])]
    stats: dict[str, int] = {}
    train_ex = encode_examples(tok, train_convs, max_tokens, stats)
    val_ex = encode_examples(tok, val_convs[:cfg.max_val], max_tokens, {})
    batches = SFTBatches(train_ex, tcfg.batch_size, tokens.pad, tcfg.seed, cfg.group_batches, cfg.pad_multiple,
                         mcfg.block_size)
    val = val_batches(val_ex, tcfg.batch_size, tokens.pad, cfg.pad_multiple, mcfg.block_size) if val_ex else None
    prompts = [render_for_completion(tok, prompt_of(c)) for c in val_convs[:4] if prompt_of(c)]
    prompts = [p for p in prompts if len(p) < mcfg.block_size // 2]
    n_tokens = sum(len(ids) for ids, _ in train_ex)
    n_targets = sum(sum(m[1:]) for _, m in train_ex)
    info = {"train_conversations": len(train_ex), "val_conversations": len(val_ex), "train_tokens": n_tokens,
            "train_target_tokens": n_targets, "padding_frac": round(batches.padding_frac(), 4), **stats,
            "refusal_prompts": training_refusal_record(data)}  # what `security scan` marks as seen in training
    print(f"sft: {len(train_ex)} training conversations ({n_tokens:,} tokens, {n_targets:,} learned), "
          f"{len(val_ex)} held out; padding {100 * info['padding_frac']:.1f}% of positions", file=sys.stderr)
    objective = lora_objective(cfg, NextTokenLoss(), base, out_dir)
    summary = train(tcfg, batches, val, out_dir, init_checkpoint=base, tokenizer_dir=tok_dir,
                    sample_prompts=prompts if tcfg.num_samples > 0 else None, objective=objective)
    finish_lora(cfg, summary, objective, out_dir, tok_dir, "sft")
    summary.update({"base_checkpoint": str(base), "data": info})
    write_json(out_dir / "sft_summary.json", summary)
    return summary

