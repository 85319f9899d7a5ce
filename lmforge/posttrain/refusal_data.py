"""Refusal training data from real harmful requests, and safe look-alikes answered helpfully.

The default data's own refusals cover destructive shell commands only, and the speedrun's security scan found that
they do not generalise: the assistant answered 7 of 8 harmful requests. Here a file of harmful requests (AdvBench's
behaviours, say: the shared data's README allows red-team prompts as refusal-training prompts, never to train
compliance) becomes refusal conversations, in varied wording with a short reason picked by the request's topic.

Two guards keep the measurement honest:

- the evaluation sets are kept out: a request that is a near-duplicate (token-set Jaccard, `NEAR_DUPLICATE`) of any
  HarmBench behaviour (the reported test set, and val) or any XSTest prompt (the over-refusal set) is dropped when
  the file is read (`evaluation_prompts` finds them in the shared data);
- refusing must not become the answer to alarming words, so safe look-alikes are mixed in: Python questions phrased
  with "destroy", "kill", "attack", "crack" ... answered from the stdlib's docstrings. They are written here, not
  taken from XSTest, and a test checks that none is a near-duplicate of an XSTest prompt.

The other evaluation sources (AdvBench, Do-Not-Answer) are not kept out: AdvBench is the usual file to refuse. So a
written data file says which requests it refuses: `sft data --out F` writes `F.manifest.json` with a digest of
each (`prompt_digest`), `lmforge sft` records the manifests of its data files in the run's summary
(`training_refusal_record`), and `lmforge security scan` marks the cases a checkpoint was trained to refuse.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any, Iterable

from lmforge.utils import LmforgeError, file_sha256, read_csv, read_json, shared_data_dir

Messages = list[dict[str, Any]]

NEAR_DUPLICATE = 0.5  # token-set Jaccard at or above which a training request counts as an evaluation prompt
MANIFEST_SUFFIX = ".manifest.json"  # `sft data --out F` describes F in F.manifest.json

# (words that mark the topic, the short reason given), first match wins; the last one catches everything else.
_REASONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("suicide", "self-harm", "self harm", "anorexia", "bulimia", "eating disorder", "cutting"),
     "it could lead someone to hurt themselves. If you are struggling, please reach out to someone you trust or a "
     "local helpline"),
    (("bomb", "explosive", "weapon", "firearm", "gun", "kill", "murder", "assassinat", "poison", "terror",
      "shoot", "violen", "attack", "torture", "kidnap"), "it could get people hurt or killed"),
    (("hack", "exploit", "malware", "virus", "ransomware", "phishing", "botnet", "ddos", "keylogger", "password",
      "crack", "spyware", "trojan", "cyber", "vulnerab"), "it would help break into or damage other people's systems"),
    (("steal", "fraud", "counterfeit", "scam", "launder", "theft", "identity", "insider trading", "cheat", "tax",
      "embezzl", "shoplift", "pirat"), "it would help someone commit fraud or theft"),
    (("drug", "meth", "cocaine", "heroin", "fentanyl"), "it is about making or dealing illegal drugs"),
    (("hate", "racis", "discriminat", "harass", "bully", "stalk", "fake news", "misinformation", "propaganda",
      "defam", "extremis"), "it would spread hate, harassment or lies about people"),
    ((), "it could cause real harm to people"),
)
_HARMFUL_REFUSALS = (
    "I can't help with that: {why}.",
    "Sorry, but I won't do this. {Why}.",
    "I won't help with that request, because {why}.",
    "No. {Why}, so I won't help with it.",
    "I'm not able to help with this: {why}. I can help with Python questions or calculations instead.",
    "That's not something I'll do: {why}.",
)

# Safe look-alikes: (questions, the stdlib object whose docstring answers them).
LOOKALIKES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("How do I destroy a whole directory tree in Python?", "How can a script wipe out a folder and everything "
      "inside it?"), "shutil.rmtree"),
    (("How do I get rid of a file with Python?", "What's the way to erase a single file from a Python script?"),
     "os.remove"),
    (("How do I make my program die immediately, without cleanup?",), "os.abort"),
    (("How do I stop shell injection attacks when I build a command line in Python?",), "shlex.quote"),
    (("How should I hash passwords so that attackers cannot crack them?",), "hashlib.pbkdf2_hmac"),
    (("How do I generate a token an attacker can't guess?", "How do I make an unguessable secret key?"),
     "secrets.token_hex"),
    (("How do I read a password without showing it on the screen?",), "getpass.getpass"),
    (("How do I break into a zip archive's contents in Python?",), "zipfile.ZipFile"),
    (("How do I fire off a background thread?", "How do I launch a thread to run a function?"), "threading.Thread"),
    (("How do I make a throwaway scratch folder to dump files in?",), "tempfile.mkdtemp"),
    (("How do I chop a long string down to a fixed width?", "How do I cut a sentence short to fit a width?"),
     "textwrap.shorten"),
    (("How do I wipe out every match of a pattern in a string?", "How do I replace every hit of a regex?"),
     "re.sub"),
    (("How do I decode a base64 payload?",), "base64.b64decode"),
    (("How do I scramble a list randomly?",), "random.shuffle"),
    (("How do I dump the trace of the exception that crashed my code?",), "traceback.print_exc"),
    (("How do I clone an object completely, nested parts included?",), "copy.deepcopy"),
)
LOOKALIKE_ANSWERS = ("Use {n}. {s}", "You can use {n}: {s}", "{n} does that. {s}")


def _reason(request: str) -> str:
    low = request.lower()
    return next(why for words, why in _REASONS if not words or any(w in low for w in words))


def harmful_refusal_conversation(rng: random.Random, prompts: tuple[str, ...]) -> Messages:
    """One harmful request from `prompts`, refused in one of several wordings with the reason its topic calls for."""
    request = rng.choice(prompts)
    why = _reason(request)
    answer = rng.choice(_HARMFUL_REFUSALS).format(why=why, Why=why[0].upper() + why[1:])
    return [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]


def lookalike_questions() -> list[str]:
    return [q for questions, _ in LOOKALIKES for q in questions]


def _tokens(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", text.lower()))


def near_duplicates(texts: Iterable[str], references: Iterable[str], threshold: float = NEAR_DUPLICATE) -> set[str]:
    """The texts whose token sets overlap some reference's by Jaccard >= threshold (identical texts included)."""
    refs = [t for t in (_tokens(r) for r in references) if t]
    out = set()
    for text in texts:
        toks = _tokens(text)
        if toks and any(len(toks & r) / len(toks | r) >= threshold for r in refs):
            out.add(text)
    return out


def evaluation_prompts(data_dir: Path | None = None) -> list[str]:
    """Every HarmBench behaviour (test: the reported set; val) and every XSTest prompt in the shared data, the
    prompts training must never hold; [] when there is no shared data."""
    root = data_dir if data_dir is not None else shared_data_dir()
    safety = root / "alignment" / "safety" if root is not None else None
    if safety is None or not safety.is_dir():
        return []
    out = []
    for name, column in (("harmbench_behaviors_text_all.csv", "Behavior"), ("xstest_v2_prompts.csv", "prompt")):
        if (safety / name).is_file():
            out += [row[column] for row in read_csv(safety / name)]
    return out


def read_request_file(path: Path) -> list[str]:
    """Requests from a CSV with a `goal` (AdvBench), `prompt` or `Behavior` column, a JSONL of {"prompt"}, or a text
    file with one request a line."""
    if not path.is_file():
        raise LmforgeError(f"--refusal-prompts: no such file: {path}")
    if path.suffix == ".csv":
        rows = read_csv(path)
        column = next((c for c in ("goal", "prompt", "Behavior") if rows and c in rows[0]), None)
        if column is None:
            raise LmforgeError(f"--refusal-prompts: {path} has no goal, prompt or Behavior column")
        found = [row[column] for row in rows]
    elif path.suffix == ".jsonl":
        try:
            found = [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (ValueError, KeyError, TypeError) as e:
            raise LmforgeError(f"--refusal-prompts: {path}: every line must be a JSON object with a prompt ({e})") from e
    else:
        found = path.read_text(encoding="utf-8").splitlines()
    return [" ".join(str(r).split()) for r in found if str(r).strip()]


def refusal_prompts_from_file(path: Path, exclude: Iterable[str] | None = None) -> tuple[tuple[str, ...], int]:
    """The file's requests, deduplicated in file order, minus near-duplicates of `exclude` (default: the
    evaluation prompts of the shared data); returns them and how many were dropped as evaluation prompts."""
    requests = list(dict.fromkeys(read_request_file(path)))
    dropped = near_duplicates(requests, evaluation_prompts() if exclude is None else exclude)
    kept = tuple(r for r in requests if r not in dropped)
    if not kept:
        raise LmforgeError(f"--refusal-prompts: no request left in {path} once evaluation prompts are removed")
    return kept, len(requests) - len(kept)


def prompt_digest(text: str) -> str:
    """A request's identity across files: sha256 of its words, lower-cased and single-spaced (a CSV's and a
    JSONL's copy of one AdvBench behaviour match), cut to 16 hex digits."""
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).hexdigest()[:16]


def refusal_source(path: Path, prompts: tuple[str, ...], dropped: int) -> dict[str, Any]:
    """What a data file's refusals were made from: the request file, its hash, and a digest of each request."""
    return {"file": path.name, "sha256": file_sha256(path), "requests": len(prompts), "dropped": dropped,
            "digests": sorted({prompt_digest(p) for p in prompts})}


def manifest_path(data_file: str | Path) -> Path:
    return Path(str(data_file) + MANIFEST_SUFFIX)


def read_manifest(data_file: str | Path) -> dict[str, Any] | None:
    """The manifest `sft data` wrote beside `data_file`, checked; None when the file has none (data written by
    anything else)."""
    path = manifest_path(data_file)
    if not path.is_file():
        return None
    manifest = read_json(path, "SFT data manifest")
    source = manifest.get("refusal_prompts") if isinstance(manifest, dict) else None
    ok = isinstance(manifest, dict) and (source is None or isinstance(source, dict) and isinstance(
        source.get("digests"), list) and all(isinstance(d, str) for d in source["digests"]))
    if not ok:
        raise LmforgeError(f"{path}: field 'refusal_prompts' must be null or an object with a list of 'digests'")
    return manifest


def training_refusal_record(data_files: list[str] | None) -> dict[str, Any]:
    """Which harmful requests an SFT run was trained to refuse, for its summary: the refusal sources of its data
    files' manifests; `complete` is false when some file has no manifest (it may hold refusals nobody recorded).
    The generated default data (no files) refuses no real harmful request."""
    sources, complete = [], True
    for path in data_files or []:
        manifest = read_manifest(path)
        if manifest is None:
            complete = False
        elif manifest.get("refusal_prompts") is not None:
            sources.append({"data": Path(path).name, **manifest["refusal_prompts"]})
    return {"complete": complete, "sources": sources}
