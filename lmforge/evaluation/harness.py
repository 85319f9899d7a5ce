"""An adapter that lets EleutherAI's lm-evaluation-harness (`pip install lm-eval`) evaluate lmforge checkpoints.

The harness asks a model three things, and each maps onto lmforge's own pieces, so its numbers and `lmforge eval
mc`'s agree on the same items:
  loglikelihood(context, continuation) -> (log p, greedy?)   - `multiple_choice.score_sequences`, batched;
  loglikelihood_rolling(text) -> log p of the whole text      - the same, over the harness's disjoint windows
                                                                of the model's context;
  generate_until(context, until, max_gen_toks) -> text        - the inference engine, greedy unless asked.

    import lm_eval
    from lmforge.evaluation.harness import LmforgeLM
    lm_eval.simple_evaluate(model=LmforgeLM("runs/base"), tasks=["my_task"],
                            task_manager=lm_eval.tasks.TaskManager(include_path="tasks/"))

or from the command line: `lmforge eval harness --checkpoint runs/base --tasks my_task --include-path tasks/`.
The harness's stock tasks download their data sets; a task defined in a local YAML file with `dataset_path: json`
and local `data_files` runs offline (with `--include-path`, only the tasks of that folder are known). lm-eval is
an optional dependency (about 35 packages: datasets, pandas, scikit-learn, ...; it does not pull torch or CUDA),
imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # the adapter is optional; `require_lm_eval` says how to get it
    LM, register_model = object, None

from lmforge.evaluation.multiple_choice import encode_pair, score_sequences
from lmforge.utils import LmforgeError


def require_lm_eval() -> None:
    if register_model is None:
        raise LmforgeError("lm-evaluation-harness is not installed: pip install lm-eval (0.4.x)")


class LmforgeLM(LM):  # type: ignore[misc, valid-type]
    """An lmforge checkpoint as an lm-eval `LM` (registered as `lmforge`: `--model lmforge --model_args
    checkpoint=DIR`)."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", batch_size: int | str = 16) -> None:
        require_lm_eval()
        super().__init__()
        from lmforge.checkpoint import checkpoint_tokenizer_dir, load_model
        from lmforge.tokenizer import Tokenizer

        self.model, ckpt = load_model(checkpoint, device)
        self.tokenizer = Tokenizer.load(checkpoint_tokenizer_dir(ckpt))
        self._device = device
        self.batch_size = int(batch_size)
        self.block_size = self.model.config.block_size

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, *req.args, self.block_size) for req in requests]
        return score_sequences(self.model, pairs, self.batch_size, self._device)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        results = []
        for req in requests:
            tokens = self.tokenizer.encode(req.args[0])
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                tokens, prefix_token=self.tokenizer.bos_id, max_seq_len=self.block_size, context_len=1)]
            scores = score_sequences(self.model, windows, self.batch_size, self._device)
            results.append(sum(total for total, _ in scores))
        return results

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from lmforge.inference.engine import Engine
        from lmforge.inference.sampling import SamplingParams

        engine = Engine(self.model, self.tokenizer)
        out = []
        for req in requests:
            context, kwargs = req.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", 128))
            prompt = [self.tokenizer.bos_id] + self.tokenizer.encode(context)
            prompt = prompt[-max(1, self.block_size - budget):]
            params = SamplingParams(temperature=float(kwargs.get("temperature", 0.0)), max_tokens=budget,
                                    stop=until, seed=0)
            out.append(engine.generate([prompt], params)[0][0].text)
        return out


if register_model is not None:
    register_model("lmforge")(LmforgeLM)


def run_harness(checkpoint: str | Path, tasks: list[str], include_path: str | Path | None = None,
                limit: int | None = None, batch_size: int = 16, device: str = "cpu") -> dict[str, Any]:
    """`lm_eval.simple_evaluate` on a checkpoint; returns the harness's per-task metrics (JSON-able)."""
    require_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager

    # With a folder of YAML tasks, only those are indexed: indexing the harness's 14,000 stock task files took
    # 30-45 s on the 2-core machine, for tasks an offline run cannot load anyway.
    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=include_path is None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LmforgeError(f"--tasks {', '.join(unknown)}: not a harness task (nor in --include-path "
                           f"{include_path})")
    out = lm_eval.simple_evaluate(model=LmforgeLM(checkpoint, device, batch_size), tasks=tasks,
                                  task_manager=manager, limit=limit, log_samples=False)
    return {name: {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
            for name, metrics in out["results"].items()}
