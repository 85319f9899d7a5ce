"""`lmforge rlhf sample`: K responses per prompt from the SFT model, every one traceable and replayable.

A sample folder holds `manifest.json` (checkpoint, tokenizer hash, prompt source, sampling settings, base seed)
and `samples.jsonl`, one line per prompt::

    {"item": 7, "prompt": [messages], "prompt_ids": [..], "kind": "arithmetic", "expression": "12*7",
     "batch": 1, "seed": 1338, "responses": [{"sample": 0, "token_ids": [..], "text": "...", "messages": [..],
     "finish_reason": "stop" | "bos" | "length" | "context" | "tool_limit" | "stray_tool_call_end"}, ...]}

Prompts run `batch_prompts` at a time through one engine session with `params.n = K` (one prefill per prompt, its
cache copied for the K samples). Each batch has its own seed (`seed + batch`), so a batch, and with it any
comparison, can be sampled again bit for bit (`replay_batch`). Tool calls run inside the batch: a row that stops at
`<|tool_call_end|>` gets the calculator's output appended into its cache and goes on, like `ChatSession` does for
one chat; the token ids recorded are the whole turn, tool output included, exactly as the model saw it.

Batches are written one file each under `batches/` as they finish (atomically), so a killed run resumes at the
first missing batch; at the end they are joined into `samples.jsonl`. A folder sampled with other settings is
refused with the setting that differs.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lmforge.config import check_fields, require
from lmforge.posttrain.datasets import LoadReport, read_rows
from lmforge.posttrain.preferences import check_prompt
from lmforge.tokenizer.chat_format import (ChatTokens, parse_assistant, parse_tool_call, prompt_of,
                                           render_for_completion, validate_messages)
from lmforge.utils import LmforgeError, atomic_write, read_json, remove_stale_temporaries, write_json

Messages = list[dict[str, Any]]
HELDOUT_PROMPT_SEED = 515151  # neither SFT's data seed nor `heldout_arithmetic`'s evaluation seed (424242)
SAMPLES_FILE, MANIFEST_FILE, BATCH_DIR = "samples.jsonl", "manifest.json", "batches"


@dataclass
class SampleConfig:
    k: int = 4  # responses per prompt (InstructGPT ranks 4 to 9)
    temperature: float = 1.0  # sampling temperature of every response
    top_k: int = 0  # top-k filter (0 = off)
    top_p: float = 1.0  # nucleus filter (1 = off)
    max_tokens: int = 128  # token budget per generated segment (a tool output starts a new one)
    seed: int = 1337  # base seed: batch b samples with seed + b
    batch_prompts: int = 8  # prompts per engine batch (each with its K samples)
    n_prompts: int = 64  # default prompts to generate when --prompts is not given
    max_tool_calls: int = 4  # calculator calls per response; one more ends it ("tool_limit")

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("k", "max_tokens", "batch_prompts", "n_prompts"):
            require(self, name, getattr(self, name) >= 1, "must be >= 1")
        require(self, "k", self.k >= 2, "must be >= 2 (a comparison needs two responses)")
        require(self, "max_tool_calls", self.max_tool_calls >= 0, "must be >= 0")
        self.sampling_params(stop_token_ids=[])  # SamplingParams checks temperature, top-k, top-p and the budget

    def sampling_params(self, stop_token_ids: list[int], seed: int | None = None) -> Any:
        from lmforge.inference.sampling import SamplingParams

        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              max_tokens=self.max_tokens, n=self.k, seed=seed, stop_token_ids=stop_token_ids)


# ---------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------

def default_prompts(n: int, seed: int = HELDOUT_PROMPT_SEED) -> list[dict[str, Any]]:
    """Held-out prompts from the SFT data's own generators: arithmetic (with its expression, so a labeler can
    check an answer with the calculator), stdlib questions, and destructive requests the model should refuse."""
    from lmforge.posttrain.default_data import (collect_doc_facts, doc_conversation, heldout_arithmetic,
                                                refusal_conversation)

    rng = random.Random(seed)
    facts = collect_doc_facts()
    arithmetic = iter(heldout_arithmetic(n, seed=seed))
    out = []
    for _ in range(n):
        kind = rng.choices(["arithmetic", "doc", "refusal"], weights=[0.4, 0.35, 0.25])[0]
        if kind == "arithmetic":
            q = next(arithmetic)
            out.append({"prompt": [{"role": "user", "content": q["question"]}], "kind": kind,
                        "expression": q["expression"]})
        else:
            msgs = doc_conversation(rng, rng.choice(facts), facts) if kind == "doc" else refusal_conversation(rng)
            out.append({"prompt": msgs[:1], "kind": kind})
    return out


def _prompt_record(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise LmforgeError(f"row must be a JSON object, got {type(row).__name__}")
    if "prompt" in row:
        prompt = row["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    elif "messages" in row:  # a whole conversation: its opening, up to the first assistant turn
        prompt = prompt_of(validate_messages(row["messages"]))
    else:
        raise LmforgeError("row needs a prompt (text or messages) or messages")
    record: dict[str, Any] = {"prompt": check_prompt(prompt), "kind": row.get("kind", "other")}
    if not isinstance(record["kind"], str):
        raise LmforgeError("kind must be a string")
    if "expression" in row:
        if not isinstance(row["expression"], str):
            raise LmforgeError("expression must be a string")
        record["expression"] = row["expression"]
    return record


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Prompts from JSONL: `{"prompt": "text" | [messages], "kind"?: str, "expression"?: str}` or a `messages`
    conversation (its opening up to the first assistant turn); bad rows reported by line and skipped."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"--prompts file not found: {path}")
    report, out = LoadReport(str(path)), []
    for line, row, error in read_rows(path):
        report.rows += 1
        if error is None:
            try:
                out.append(_prompt_record(row))
                report.kept += 1
                continue
            except LmforgeError as e:
                error = str(e)
        report.add_bad(line, error)
    if not out:
        first = f" (first problem: line {report.bad[0][0]}: {report.bad[0][1]})" if report.bad else ""
        raise LmforgeError(f"--prompts {path}: no usable prompt in {report.rows} rows{first}")
    if report.n_bad:
        print(report.summary(), file=sys.stderr)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Batched sampling with tools
# ---------------------------------------------------------------------------------------------------------------

def _finish_of(ids: list[int], engine_reason: str | None, t: ChatTokens) -> str:
    """"stop" only for a turn closed by `<|end|>`; "bos" for one that broke off into a new document (no proper
    end of turn either); "stray_tool_call_end" (`ChatSession`'s name) for one that stopped on a call end with no
    call opened in its segment; else the engine's reason ("length", "context")."""
    if ids and ids[-1] == t.end:
        return "stop"
    if ids and ids[-1] == t.bos:
        return "bos"
    if ids and ids[-1] == t.tool_call_end:
        return "stray_tool_call_end"
    return engine_reason or "length"


def sample_turns(engine: Any, prompts: list[list[int]], params: Any, tools: dict[str, Any],
                 max_tool_calls: int = 4, max_tool_output_tokens: int = 96) -> list[dict[str, Any]]:
    """One assistant turn per row (row r = sample r % n of prompt r // n), tool calls run inside the batch.

    Returns per row {"token_ids": the whole turn (tool outputs included), "finish_reason"}. Rows that stop at
    `<|tool_call_end|>` get the tool's output appended into their cache and continue; the others are left alone.
    """
    from lmforge.inference.tools import run_tool

    tok = engine.tokenizer
    t = ChatTokens.of(tok)
    session = engine.session(prompts, replace(params, stop_token_ids=[t.end, t.bos, t.tool_call_end]))
    turns: list[list[int]] = [[] for _ in range(session.batch)]
    finish: list[str | None] = [None] * session.batch
    calls = [0] * session.batch
    while True:
        forced: list[list[int]] = [[] for _ in turns]
        for r, c in enumerate(session.run()):
            if finish[r] is not None:
                continue
            turns[r].extend(c.token_ids)
            if not c.token_ids or c.token_ids[-1] != t.tool_call_end or t.tool_call not in c.token_ids:
                finish[r] = _finish_of(turns[r], c.finish_reason, t)
                continue
            calls[r] += 1
            if calls[r] > max_tool_calls:
                finish[r] = "tool_limit"
                continue
            opened = len(turns[r]) - 1 - turns[r][::-1].index(t.tool_call)
            name, arguments = parse_tool_call(tok.decode(turns[r][opened + 1:-1]))
            out_ids = tok.encode(run_tool(tools, name, arguments))[:max_tool_output_tokens]
            forced[r] = [t.tool_output, *out_ids, t.tool_output_end]
        if not any(forced):
            return [{"token_ids": ids, "finish_reason": f} for ids, f in zip(turns, finish)]
        try:
            session.append(forced)
        except LmforgeError:  # the context is full: those turns end where they are
            for r, f in enumerate(forced):
                if f:
                    finish[r] = "context"
            return [{"token_ids": ids, "finish_reason": f} for ids, f in zip(turns, finish)]
        for r, f in enumerate(forced):
            turns[r].extend(f)


def _batch_records(engine: Any, cfg: SampleConfig, items: list[dict[str, Any]], first: int, batch: int,
                   tools: dict[str, Any]) -> list[dict[str, Any]]:
    tok = engine.tokenizer
    prompt_ids = [render_for_completion(tok, it["prompt"]) for it in items]
    seed = cfg.seed + batch
    t = ChatTokens.of(tok)
    rows = sample_turns(engine, prompt_ids, cfg.sampling_params([t.end], seed=seed), tools, cfg.max_tool_calls)
    records = []
    for i, it in enumerate(items):
        responses = []
        for j in range(cfg.k):
            row = rows[i * cfg.k + j]
            turn = parse_assistant(tok, row["token_ids"])
            responses.append({"sample": j, "token_ids": row["token_ids"], "text": turn["content"],
                              "messages": turn["messages"], "finish_reason": row["finish_reason"]})
        records.append({"item": first + i, **it, "prompt_ids": prompt_ids[i], "batch": batch, "seed": seed,
                        "responses": responses})
    return records


# ---------------------------------------------------------------------------------------------------------------
# The sample folder
# ---------------------------------------------------------------------------------------------------------------

def _settings(cfg: SampleConfig, engine: Any, ckpt: Path, prompts: list[dict[str, Any]], source: str) -> dict:
    digest = hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()
    sampling = {k: v for k, v in asdict(cfg).items() if k != "n_prompts"}
    return {"checkpoint": str(ckpt.resolve()), "tokenizer_hash": engine.tokenizer.hash, "prompts": source,
            "prompts_sha256": digest, "n_prompts": len(prompts), "sampling": sampling}


def _check_resume(out: Path, settings: dict[str, Any]) -> None:
    """Refuse a folder that holds something else, or samples made with other settings (naming the setting)."""
    manifest = out / MANIFEST_FILE
    if not manifest.is_file():
        if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise LmforgeError(f"--out {out} is not empty and holds no {MANIFEST_FILE}: not a sample folder")
        return
    old = read_json(manifest, "sample manifest").get("settings", {})
    flat_old = {**old, **old.get("sampling", {})}
    flat_new = {**settings, **settings["sampling"]}
    for key, value in flat_new.items():
        if key != "sampling" and flat_old.get(key) != value:
            raise LmforgeError(f"--out {out} was sampled with {key}={flat_old.get(key)!r}, not {value!r}; "
                               "use another --out folder")


def _check_prompt_lengths(engine: Any, prompts: list[dict[str, Any]]) -> None:
    """Refuse, before anything is sampled, a prompt that leaves no room for an answer in the model's context
    (rather than dying at its batch, halfway through the run)."""
    block = engine.model.config.block_size
    for i, p in enumerate(prompts):
        n = len(render_for_completion(engine.tokenizer, p["prompt"]))
        if n >= block - 1:
            raise LmforgeError(f"prompt {i} is {n} tokens, which leaves no room for an answer in the model's "
                               f"context of {block}; shorten it or leave it out")


def run_sample(cfg: SampleConfig, checkpoint: str | Path, out: str | Path, prompts_path: str | Path | None = None,
               engine: Any = None, device: str = "cpu", log: Any = print) -> dict[str, Any]:
    """Sample every prompt K times into `out` (resuming a killed run); returns the manifest. The device is not a
    setting of the folder: a run resumed on another device continues it (its batches are then not bit-identical
    to what the first device would have sampled, which `replay_batch` on that device shows)."""
    from lmforge.checkpoint import resolve_checkpoint
    from lmforge.inference.engine import Engine
    from lmforge.inference.tools import default_tools

    out = Path(out)
    ckpt = resolve_checkpoint(checkpoint)
    prompts = read_prompts(prompts_path) if prompts_path is not None else default_prompts(cfg.n_prompts)
    engine = engine or Engine.from_checkpoint(str(ckpt), device=device)
    settings = _settings(cfg, engine, ckpt, prompts, str(prompts_path) if prompts_path else "default")
    _check_resume(out, settings)
    _check_prompt_lengths(engine, prompts)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    if (out / SAMPLES_FILE).is_file():
        log(f"{out} is complete ({len(prompts)} prompts x {cfg.k} responses); nothing to do")
        return read_json(out / MANIFEST_FILE, "sample manifest")
    write_json(out / MANIFEST_FILE, {"settings": settings, "complete": False})
    (out / BATCH_DIR).mkdir(exist_ok=True)
    remove_stale_temporaries(out / BATCH_DIR)
    tools = {"calculator": default_tools()["calculator"]}
    n_batches = -(-len(prompts) // cfg.batch_prompts)
    for b in range(n_batches):
        path = out / BATCH_DIR / f"batch_{b:05d}.jsonl"
        if path.is_file():
            continue
        first = b * cfg.batch_prompts
        records = _batch_records(engine, cfg, prompts[first:first + cfg.batch_prompts], first, b, tools)
        with atomic_write(path) as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        log(f"batch {b + 1}/{n_batches}: {len(records)} prompts x {cfg.k} responses")
    with atomic_write(out / SAMPLES_FILE) as f:
        for b in range(n_batches):
            f.write((out / BATCH_DIR / f"batch_{b:05d}.jsonl").read_text(encoding="utf-8"))
    manifest = {"settings": settings, "complete": True, "n_items": len(prompts), "n_batches": n_batches}
    write_json(out / MANIFEST_FILE, manifest)
    shutil.rmtree(out / BATCH_DIR)
    return manifest


_RESPONSE_FIELDS = {"sample": int, "token_ids": list, "text": str, "messages": list, "finish_reason": str}


def _check_record(record: Any) -> None:
    """The fields later stages read from a sample record, with their types (a damaged file is refused up front,
    not halfway through labeling)."""
    if not isinstance(record, dict):
        raise LmforgeError("a record must be a JSON object")
    for key, kind in (("item", int), ("batch", int), ("seed", int), ("responses", list)):
        if not isinstance(record.get(key), kind):
            raise LmforgeError(f"{key} must be {kind.__name__}")
    check_prompt(record.get("prompt"))
    if len(record["responses"]) < 2:
        raise LmforgeError("a record needs at least two responses")
    for j, resp in enumerate(record["responses"]):
        for key, kind in _RESPONSE_FIELDS.items():
            if not isinstance(resp, dict) or not isinstance(resp.get(key), kind):
                raise LmforgeError(f"responses[{j}].{key} must be {kind.__name__}")


def load_samples(folder: str | Path) -> list[dict[str, Any]]:
    """The records of a complete sample folder (refusing an unfinished or damaged one, naming the line)."""
    folder = Path(folder)
    path = folder / SAMPLES_FILE
    if not path.is_file():
        raise LmforgeError(f"{folder} holds no {SAMPLES_FILE}: run `lmforge rlhf sample --out {folder}` "
                           "(again, if it was interrupted)")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                _check_record(record)
            except (json.JSONDecodeError, LmforgeError) as e:
                raise LmforgeError(f"{path}:{line_no}: {getattr(e, 'msg', e)}") from e
            records.append(record)
    if len({r["item"] for r in records}) != len(records):
        raise LmforgeError(f"{path}: an item number appears twice")
    return records


def replay_batch(engine: Any, folder: str | Path, batch: int) -> list[dict[str, Any]]:
    """Sample batch `batch` of a folder again with its recorded settings and seed: the same records come back
    when the engine runs the same checkpoint (how a comparison is traced back to its generation)."""
    from lmforge.inference.tools import default_tools

    folder = Path(folder)
    settings = read_json(folder / MANIFEST_FILE, "sample manifest")["settings"]
    cfg = SampleConfig(**settings["sampling"])
    records = [r for r in load_samples(folder) if r["batch"] == batch]
    if not records:
        raise LmforgeError(f"{folder} has no batch {batch}")
    items = [{k: v for k, v in r.items() if k not in ("item", "prompt_ids", "batch", "seed", "responses")}
             for r in records]
    return _batch_records(engine, cfg, items, records[0]["item"], batch, {"calculator": default_tools()["calculator"]})
