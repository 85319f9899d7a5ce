"""Tokenizer benchmark: our BPE trainer and encoder against Hugging Face `tokenizers`, `rustbpe` and `tiktoken`,
side by side in one run.

    .venv/bin/python benchmarks/bench_tokenizer.py            # 10 MB and 100 MB, vocab 4,096 and 32,768
    .venv/bin/python benchmarks/bench_tokenizer.py --quick    # 10 MB, vocab 4,096

The corpus is real text from ../shared/data: the three books (Project Gutenberg header and licence stripped, cut
into documents of about 50 KB at paragraph breaks), the gold article bodies of the article-extraction benchmark, and
the 1,033 trafilatura evaluation pages turned into text by resiliparse (main content). Every tenth document is held
out (compression and encoding speed are measured on it). That gives about 13 MB of distinct training text; larger
corpora repeat it with variation: copy k > 0 of a document re-rolls every digit, re-cases a third of its paragraphs
(upper, lower or title case) and shuffles the words of a fifth of its lines, all from a seeded RNG, so repetition
adds new chunks instead of only multiplying counts. The corpus is a JSONL file (one document per line) cached under
~/.cache/lmforge/bench_tokenizer; every trainer streams it through the same Python generator.

Each training run is a fresh subprocess (peak memory = its VmHWM, which includes the interpreter and libraries:
the "idle" column is that baseline; our counting worker processes are reported beside, their figure includes the
pages they share with their parent). Vocabulary sizes count the 256 bytes and the merges; ours adds its 10
special tokens on top, so all three learn the same number of merges. The machine is shared: compare ratios.

Notes: the measurements behind the design of lmforge/tokenizer/bpe_train.py (its docstrings keep the reasons).
- Two phases: `learn_merges` on 10 MB / 4k took 1.74 s with the string phase only and 0.93 s with the numpy
  position-array phase first (32k: 3.6 s -> 2.5 s).
- Grouping the initial pairs with a weighted bincount and a stable (radix) sort replaced one Python step per pair
  occurrence, which took 0.5 s on 10 MB.
- First-phase positions turned into chunk indices lazily (only for pairs the string phase merges): saved 0.1 s.
- The heap holds ints ordered as (-count, pair) instead of tuples: saved about 0.1 s on 10 MB / 32k.
- `_PairQueue` keeps rare pairs in per-count lists (a 32k vocabulary on 10 MB pushes about 180,000 new pairs and
  merges none below count ~10); with the C-level stale filter in `_merge_strings` (on 10 MB / 32k, 445,000 of the
  702,000 listed chunk entries are stale) it cut the instructions of `learn_merges` by 8% on 10 MB / 8k (callgrind).
- One merge site per rewritten chunk is about 95% of rewrites: the fast path of `_merge_strings`.
- Pausing the cyclic garbage collector during `learn_merges` removed about 4% of its instructions.
- Splitting custom patterns by construction (issue 13) left the built-in patterns' paths as they were: medians of
  six alternating runs each, before/after, on the loaded 2-core machine: counting 9.3/9.6 MB/s (CPU), learn_merges
  10 MB / 4k 1.13/1.10 CPU s, encoding (--quick, 1 thread, per CPU s) 13.2/12.9 MB/s, ours/tiktoken 1.01/1.03.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import random
import re
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("LMFORGE_BENCH_CACHE", Path.home() / ".cache" / "lmforge" / "bench_tokenizer"))
N_SPECIAL = 10
TRAINERS = ("ours", "tokenizers", "rustbpe")
EXTRA = ("ours-hf-ties",)  # ours with Hugging Face's tie-break: merge-for-merge check against `tokenizers`


# ---------------------------------------------------------------------------------------------------- the corpus
def _book_documents(text: str, size: int = 50_000) -> list[str]:
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start >= 0 and end > start:
        text = text[text.index("\n", start) + 1 : end]
    docs, current, n = [], [], 0
    for para in text.split("\n\n"):
        current.append(para)
        n += len(para) + 2
        if n >= size:
            docs.append("\n\n".join(current))
            current, n = [], 0
    if current:
        docs.append("\n\n".join(current))
    return docs


def unique_documents() -> list[str]:
    """All distinct real documents, extracted once and cached."""
    cache = CACHE / "documents.jsonl.gz"
    if cache.is_file():
        with gzip.open(cache, "rt", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f]
    from resiliparse.extract.html2text import extract_plain_text

    from lmforge.data.readers import decode_html
    from lmforge.utils import shared_data_dir

    shared = shared_data_dir()
    if shared is None:
        sys.exit("bench_tokenizer: ../shared/data is absent (set LMFORGE_SHARED_DATA)")
    docs: list[str] = []
    for name in ("tinyshakespeare.txt", "war_and_peace.txt", "taylorswift.txt"):
        docs += _book_documents((shared / "pretrain/text" / name).read_text(encoding="utf-8"))
    gold = json.loads((shared / "pretrain/web/article-extraction-benchmark/ground-truth.json").read_text())
    docs += [v["articleBody"] for _, v in sorted(gold.items())]
    print("extracting the trafilatura evaluation pages with resiliparse (once) ...", flush=True)
    with tarfile.open(shared / "pretrain/web/trafilatura-eval.tar.xz", "r:xz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".html"):
                html, _ = decode_html(tar.extractfile(member).read())
                text = extract_plain_text(html or "", main_content=True) if html else ""
                if len(text) > 200:
                    docs.append(text)
    docs = [d.replace("\x00", "") for d in docs if d.strip()]
    CACHE.mkdir(parents=True, exist_ok=True)
    with gzip.open(cache, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    return docs


_DIGITS = re.compile(r"\d")


def _vary(doc: str, rng: random.Random) -> str:
    doc = _DIGITS.sub(lambda m: str(rng.randrange(10)), doc)
    paras = []
    for para in doc.split("\n\n"):
        r = rng.random()
        para = para.upper() if r < 0.11 else para.lower() if r < 0.22 else para.title() if r < 0.33 else para
        lines = para.split("\n")
        for i, line in enumerate(lines):
            if rng.random() < 0.2:
                words = line.split(" ")
                rng.shuffle(words)
                lines[i] = " ".join(words)
        paras.append("\n".join(lines))
    return "\n\n".join(paras)


def build_corpus(size_mb: int) -> tuple[Path, Path]:
    """(training JSONL of about size_mb MB, held-out text file), cached."""
    train, held = CACHE / f"train_{size_mb}mb.jsonl", CACHE / "held_out.txt"
    if train.is_file() and held.is_file():
        return train, held
    docs = unique_documents()
    train_docs = [d for i, d in enumerate(docs) if i % 10 != 9]
    held.write_text("\n\n".join(d for i, d in enumerate(docs) if i % 10 == 9), encoding="utf-8")
    target, written, k = size_mb * 1_000_000, 0, 0
    tmp = train.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        while written < target:
            for i, d in enumerate(train_docs):
                text = d if k == 0 else _vary(d, random.Random(k * 1_000_003 + i))
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                written += len(text.encode("utf-8"))
                if written >= target:
                    break
            k += 1
    os.replace(tmp, train)
    return train, held


def stream(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


# ------------------------------------------------------------------------------------------- one training run
def _hf_byte_decoder() -> dict[str, int]:
    from lmforge.tokenizer.bpe_train import byte_to_char

    return {byte_to_char(b): b for b in range(256)}


def peak_rss_kb() -> int:
    """This process's peak resident memory (VmHWM). Unlike `ru_maxrss`, which Linux carries over from the parent
    through fork and exec, it starts afresh at exec, so the benchmark's own memory does not leak into the figure."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(kind: str, corpus: Path, vocab: int, out: Path) -> None:
    """Train one tokenizer in this (fresh) process; write its learned tokens, time and peak memory."""
    from lmforge.tokenizer.patterns import GPT4_PATTERN

    idle = resource.getrusage(resource.RUSAGE_SELF)
    idle_kb, cpu0 = peak_rss_kb(), idle.ru_utime + idle.ru_stime
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if kind in ("ours", "ours-hf-ties"):
        from lmforge.tokenizer import Tokenizer

        cores = len(os.sched_getaffinity(0))
        tok = Tokenizer.train(stream(corpus), vocab + N_SPECIAL, num_workers=cores,
                              byte_order="hf" if kind == "ours-hf-ties" else "bytes")
        seconds = time.perf_counter() - t0
        tokens = [tok.token_bytes(i) for i in range(256, tok.vocab_size - N_SPECIAL)]
        tok.save(out / kind)
    elif kind == "tokenizers":
        from tokenizers import Regex, Tokenizer as HF, decoders, models, pre_tokenizers, trainers

        hf = HF(models.BPE(ignore_merges=True))
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(GPT4_PATTERN), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=0, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
        hf.train_from_iterator(stream(corpus), trainer)
        seconds = time.perf_counter() - t0
        dec = _hf_byte_decoder()
        vocab_map = hf.get_vocab()
        tokens = [bytes(dec[c] for c in s) for s, _ in sorted(vocab_map.items(), key=lambda kv: kv[1])][256:]
        hf.save(str(out / "tokenizers.json"))
    elif kind == "rustbpe":
        import rustbpe

        r = rustbpe.Tokenizer()
        r.train_from_iterator(stream(corpus), vocab, pattern=GPT4_PATTERN)
        seconds = time.perf_counter() - t0
        tokens = [bytes(k) for k, v in sorted(r.get_mergeable_ranks(), key=lambda kv: kv[1])][256:]
    else:
        raise ValueError(kind)
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime - cpu0  # all threads and processes
    (out / f"{kind}.tokens").write_text("\n".join(t.hex() for t in tokens))
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak_rss_kb() / 1024,
                      "idle_mb": idle_kb / 1024, "children_peak_mb": children.ru_maxrss / 1024}))


def run_training(corpus: Path, vocab: int, out: Path, kinds: tuple[str, ...] = TRAINERS) -> dict[str, dict]:
    results = {}
    for kind in kinds:
        cmd = [sys.executable, __file__, "--worker", kind, "--corpus", str(corpus), "--vocab", str(vocab), "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            raise SystemExit(f"{kind} training failed")
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[kind]["tokens"] = (out / f"{kind}.tokens").read_text().split("\n")
    return results


def compare_tokens(a: list[str], b: list[str]) -> str:
    same_prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if a == b:
        return f"identical, merge for merge ({len(a)} merges)"
    overlap = len(set(a) & set(b)) / max(1, len(set(b)))
    return f"first {same_prefix} merges identical, {overlap:.1%} of tokens shared"


# ------------------------------------------------------------------------------------------------- encoding
def mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds


def bench_encoding(tok_dir: Path, hf_file: Path, held: Path, target_mb: int) -> None:
    import tiktoken
    from tokenizers import Tokenizer as HF

    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_dir)
    base = held.read_text(encoding="utf-8").split("\n\n")
    docs, size = [], 0
    while size < target_mb * 1_000_000:
        for d in base:
            docs.append(d)
            size += len(d.encode("utf-8"))
    cores = len(os.sched_getaffinity(0))
    enc = tiktoken.Encoding(name="ours-in-tiktoken", pat_str=tok.pattern, mergeable_ranks=tok.mergeable_ranks,
                            special_tokens=tok.special_tokens)
    hf = HF.from_file(str(hf_file))
    hf_docs = docs[: len(docs) // 4]  # HF is slower; a quarter of the text keeps the run short
    hf_size = sum(len(d.encode("utf-8")) for d in hf_docs)

    def timed(fn, nbytes):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        return mb_per_s(nbytes, time.perf_counter() - t0), mb_per_s(nbytes, time.process_time() - c0), out

    def best_of_2(runs):
        """Each encoder twice, in order then in reverse (A B C C B A), best of two, with the garbage collector
        off (the id lists are many small objects): less sensitive to the shared machine and to the order."""
        gc.collect()
        gc.disable()
        try:
            first = [timed(fn, n) for fn, n in runs]
            second = [timed(fn, n) for fn, n in reversed(runs)][::-1]
        finally:
            gc.enable()
        return [(max(a[0], b[0]), max(a[1], b[1]), a[2]) for a, b in zip(first, second)]

    (ours_1, ours_1c, ids_ours), (tik_1, tik_1c, ids_tik), (hf_1, hf_1c, ids_hf) = best_of_2([
        (lambda: [tok.encode(d) for d in docs], size),
        (lambda: [enc.encode_ordinary(d) for d in docs], size),
        (lambda: [hf.encode(d).ids for d in hf_docs], hf_size),
    ])
    (ours_n, _, _), (tik_n, _, _), (hf_n, _, _) = best_of_2([
        (lambda: tok.encode_batch(docs, num_threads=cores), size),
        (lambda: enc.encode_ordinary_batch(docs, num_threads=cores), size),
        (lambda: [e.ids for e in hf.encode_batch(hf_docs)], hf_size),
    ])
    assert ids_ours == ids_tik, "our ids differ from tiktoken's on the same ranks"
    same_hf = ids_hf == ids_ours[: len(hf_docs)]
    ref_text = "\n\n".join(base)[:1_000_000]
    ref_bytes = len(ref_text.encode("utf-8"))
    ref_1, ref_1c, ref_ids = timed(lambda: tok.reference().encode(ref_text), ref_bytes)  # fresh encoder: cold cache
    assert ref_ids == tok.encode(ref_text)
    rows = [
        ("ours (tiktoken core)", ours_1, ours_1c, ours_n),
        ("tiktoken Encoding", tik_1, tik_1c, tik_n),
        ("tokenizers (same vocab)", hf_1, hf_1c, hf_n),
    ]
    print(f"\n## Encoding throughput, {size / 1e6:.1f} MB of held-out text, vocabulary {tok.vocab_size}, {cores} cores "
          f"(load average {os.getloadavg()[0]:.1f})")
    print(f"{'encoder':26s} {'1 thread MB/s':>14s} {'(per CPU s)':>12s} {f'{cores} threads MB/s':>17s}")
    for name, one, one_cpu, many in rows:
        print(f"{name:26s} {one:14.2f} {one_cpu:12.2f} {many:17.2f}")
    print(f"{'reference (pure Python)':26s} {ref_1:14.2f} {ref_1c:12.2f} {'-':>17s}   (cold, {ref_bytes / 1e6:.1f} MB)")
    print(f"ratios: ours/tiktoken {ours_1 / tik_1:.3f} (1 thread; {ours_1c / tik_1c:.3f} per CPU s), "
          f"{ours_n / tik_n:.3f} ({cores} threads); ours/tokenizers {ours_1 / hf_1:.2f} (1 thread), "
          f"{ours_n / hf_n:.2f} ({cores} threads)")
    print(f"ids identical: ours == tiktoken: yes; == tokenizers (exported tokenizer.json): {'yes' if same_hf else 'NO'}; "
          "== reference: yes")


def compression(tok_dir: Path, hf_trained: Path, held: Path) -> tuple[float, float]:
    from tokenizers import Tokenizer as HF

    from lmforge.tokenizer import Tokenizer

    text = held.read_text(encoding="utf-8")
    docs = text.split("\n\n")
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    ours = sum(map(len, Tokenizer.load(tok_dir).encode_batch(docs)))
    theirs = sum(len(e.ids) for e in HF.from_file(str(hf_trained)).encode_batch(docs))
    return nbytes / ours, nbytes / theirs


# ------------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 MB and vocabulary 4,096 only")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="corpus sizes in MB (default 10 100)")
    ap.add_argument("--vocabs", type=int, nargs="+", default=None, help="vocabulary sizes (default 4096 32768)")
    ap.add_argument("--encode-mb", type=int, default=None, help="MB of text for the encoding benchmark (default 10; 5 with --quick)")
    ap.add_argument("--encode-only", action="store_true", help="only the encoding benchmark, on the tokenizer a "
                    "previous run trained for the last size and vocabulary")
    ap.add_argument("--worker", choices=TRAINERS + EXTRA, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.corpus, args.vocab, args.out)
        return
    sizes = args.sizes or ([10] if args.quick else [10, 100])
    vocabs = args.vocabs or ([4096] if args.quick else [4096, 32768])
    print(f"cores: {len(os.sched_getaffinity(0))}, load average at start: {os.getloadavg()[0]:.1f} (shared machine: compare ratios)")
    last = CACHE / f"run_{sizes[-1]}mb_{vocabs[-1]}"
    if args.encode_only and not (last / "ours").is_dir():
        sys.exit(f"bench_tokenizer: no trained tokenizer in {last}; run without --encode-only first")
    for size in [] if args.encode_only else sizes:
        corpus, held = build_corpus(size)
        print(f"\n# {size} MB corpus ({corpus.stat().st_size / 1e6:.1f} MB of JSONL), held-out {held.stat().st_size / 1e6:.1f} MB")
        for vocab in vocabs:
            out = CACHE / f"run_{size}mb_{vocab}"
            first = (size, vocab) == (sizes[0], vocabs[0])
            res = run_training(corpus, vocab, out, TRAINERS + (EXTRA if first else ()))
            print(f"\n## Training to vocabulary {vocab} on {size} MB (load average {os.getloadavg()[0]:.1f})")
            print(f"{'trainer':12s} {'seconds':>8s} {'ours/it':>8s} {'CPU s':>8s} {'ours/it':>8s} {'peak MB':>8s} {'idle MB':>8s}")
            for kind in TRAINERS:
                r = res[kind]
                extra = f" (counting processes: {r['children_peak_mb']:.0f} MB peak each)" if kind == "ours" else ""
                ratio = res["ours"]["seconds"] / r["seconds"]
                cpu_ratio = res["ours"]["cpu_seconds"] / r["cpu_seconds"]
                print(f"{kind:12s} {r['seconds']:8.2f} {ratio:8.2f} {r['cpu_seconds']:8.2f} {cpu_ratio:8.2f} "
                      f"{r['peak_mb']:8.0f} {r['idle_mb']:8.0f}{extra}")
            vs_hf = res["ours"]["seconds"] / res["tokenizers"]["seconds"]
            vs_rust = res["ours"]["seconds"] / res["rustbpe"]["seconds"]
            print(f"goals (wall time): ours <= 0.7x tokenizers: {vs_hf:.2f}x ({'met' if vs_hf <= 0.7 else 'NOT met'}); "
                  f"ours <= 2.5x rustbpe: {vs_rust:.2f}x ({'met' if vs_rust <= 2.5 else 'NOT met'})")
            print(f"exactness: ours vs rustbpe: {compare_tokens(res['ours']['tokens'], res['rustbpe']['tokens'])}")
            print(f"           ours vs tokenizers: {compare_tokens(res['ours']['tokens'], res['tokenizers']['tokens'])} "
                  "(ties differ: theirs follow their ByteLevel alphabet order)")
            if first:
                print(f"           ours with byte_order='hf' vs tokenizers: "
                      f"{compare_tokens(res['ours-hf-ties']['tokens'], res['tokenizers']['tokens'])}")
            ours_bpt, hf_bpt = compression(out / "ours", out / "tokenizers.json", held)
            print(f"compression on held-out text: ours {ours_bpt:.4f} bytes/token, tokenizers {hf_bpt:.4f} "
                  f"(ratio {ours_bpt / hf_bpt:.4f})")
    from lmforge.tokenizer import Tokenizer

    Tokenizer.load(last / "ours").export_hf(last / "ours_hf.json")
    bench_encoding(last / "ours", last / "ours_hf.json", build_corpus(sizes[0])[1], args.encode_mb or (5 if args.quick else 10))


if __name__ == "__main__":
    main()
