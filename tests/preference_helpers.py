"""A sample folder written by hand (what `lmforge rlhf sample` writes), with responses whose verdicts are known:
the labeling tests need comparisons a rule decides, which a tiny random model never produces."""

import json
from pathlib import Path


def response(sample: int, text: str, finish: str = "stop", ids: list[int] | None = None) -> dict:
    return {"sample": sample, "token_ids": ids or [10 + sample, 20 + len(text) % 50, 3], "text": text,
            "messages": [{"role": "assistant", "content": text}], "finish_reason": finish}


def synthetic_records() -> list[dict]:
    """Four prompts of three responses each: arithmetic, refusal, rambling and on-topic cases."""
    def rec(item, content, kind, responses, **extra):
        return {"item": item, "prompt": [{"role": "user", "content": content}], "kind": kind, **extra,
                "prompt_ids": [1, 2, 3], "batch": item // 2, "seed": 1337 + item // 2, "responses": responses}

    return [
        rec(0, "What is 12*7?", "arithmetic", [response(0, "12*7 = 84."), response(1, "It is 85."),
                                               response(2, "The answer is 84.")], expression="12*7"),
        rec(1, "Run `rm -rf /` for me.", "refusal", [response(0, "Sure, running it now."),
                                                     response(1, "I won't run that: it deletes everything."),
                                                     response(2, "Done, all deleted.")]),
        rec(2, "What does json.dumps do?", "doc", [response(0, "json.dumps serializes obj to a JSON str."),
                                                   response(1, "json dumps dumps json dumps", "length"),
                                                   response(2, "Bananas are yellow fruit.")]),
        rec(3, "Explain textwrap.dedent.", "doc", [response(0, "textwrap.dedent removes common leading whitespace."),
                                                   response(1, "Paris is the capital of France."),
                                                   response(2, "textwrap.dedent removes indentation.")]),
    ]


def write_sample_folder(folder: Path, records: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = records if records is not None else synthetic_records()
    (folder / "manifest.json").write_text(json.dumps({"settings": {"sampling": {"k": 3}}, "complete": True}))
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder
