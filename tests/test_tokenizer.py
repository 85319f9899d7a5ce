"""Tokenizer: hand-checked merges, determinism, round trip, parity of the three encoders, special-token safety,
merge-for-merge equality with Hugging Face tokenizers / rustbpe, and clear errors on bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.tokenizer import SPECIAL_TOKENS, Tokenizer
from lmforge.tokenizer.bpe_train import TrainStats, byte_to_char, count_chunks, learn_merges
from lmforge.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN
from lmforge.utils import LmforgeError

N_SPECIAL = len(SPECIAL_TOKENS)

# A small multilingual corpus with code, numbers and emoji, so merges inside multi-byte characters exist.
SMALL_CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 20,
    "def main(argv: list[str]) -> int:\n    return 0\r\n\r\n" * 10,
    "1234567890 3.14159 2,718 100000 " * 10,
    "日本語のテキストと中文文本，한국어 텍스트. " * 10,
    "Ünïcödé façade naïve café — “quotes” ‘single’ … " * 10,
    "emoji 😀😃🙂 👩‍👩‍👧 🇫🇷 ❤️ " * 10,
    "e\u0301 a\u0300 n\u0303 combining marks " * 10,
]

ADVERSARIAL = [
    "",
    " ",
    "😀",
    "👩‍👩‍👧‍👦🇯🇵🏳️‍🌈",
    "中文日本語한국어",
    "e\u0301\u0302\u0303\u0304",
    "\x00\x01\x02\x1b[31mred\x1b[0m\x7f",
    "line\r\nline\rline\n\n\n",
    " " * 5000,
    "\t" * 300 + "\n" * 300,
    "9" * 5000,
    "12345678901234567890" * 100,
    "a" * 3000,
    "\ufeffBOM \u200b zero width \u202eRTL override",
    "\ufffd replacement char",
    "\ud800",
    "lone \udfff surrogate \ud83d in text",
    "\ud83d\ude00",  # a surrogate pair as two code points (not the emoji)
    "<|bos|><|end|><|assistant|>",
    "'s 'T 'LL 'Re",
    "\U0010ffff\U000e0001",
]


@pytest.fixture(scope="module")
def small_tok() -> Tokenizer:
    return Tokenizer.train(SMALL_CORPUS, 420)


@pytest.fixture(scope="module")
def real_text(shared_data) -> dict[str, str]:
    """Training text (Shakespeare + English web articles) and held-out text (War and Peace + multilingual web)."""
    text_dir = shared_data / "pretrain" / "text"
    articles = json.loads((shared_data / "pretrain/web/article-extraction-benchmark/ground-truth.json").read_text())
    bodies = [v["articleBody"] for _, v in sorted(articles.items())]
    return {
        "train": [(text_dir / "tinyshakespeare.txt").read_text()] + bodies[::2],
        "held_out": (text_dir / "war_and_peace.txt").read_text()[200_000:700_000] + "\n".join(bodies[1::2])
        + (text_dir / "taylorswift.txt").read_text(),
    }


@pytest.fixture(scope="module")
def real_tok(real_text) -> Tokenizer:
    return Tokenizer.train(real_text["train"], 2048)


# ------------------------------------------------------------------------------------------------------ training
def test_known_merges_wikipedia_example():
    # "aaabdaaabac": (a,a) occurs 4 times counting overlaps -> 256. Then (256,a) and (a,b) both occur twice: the
    # smaller pair (a,b) wins -> 257; then (256,257) twice -> 258; then all pairs once: the smallest, (a,c) -> 259.
    tok = Tokenizer.train(["aaabdaaabac"], 256 + 4 + N_SPECIAL)
    a, b, c = ord("a"), ord("b"), ord("c")
    assert tok.merges == [(a, a, 256), (a, b, 257), (256, 257, 258), (a, c, 259)]
    assert tok.token_bytes(258) == b"aaab"
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, 259]


def test_known_merges_counts_weight_chunks():
    # chunks: " hug" x3, " pug" x1, "hug" x1 -> ("u","g") 5 times, then (" ", "hug"?) no: ("h","ug") 4 times
    tok = Tokenizer.train([" hug hug hug pug", "hug"], 256 + 3 + N_SPECIAL)
    u, g, h, sp = ord("u"), ord("g"), ord("h"), ord(" ")
    assert tok.merges[:2] == [(u, g, 256), (h, 256, 257)]
    assert tok.merges[2] == (sp, 257, 258)  # " hug" x3 beats " p" x1


def test_document_boundary_is_a_hard_split():
    joined = Tokenizer.train(["abab"], 256 + 2 + N_SPECIAL)
    assert [m[:2] for m in joined.merges] == [(97, 98), (256, 256)]
    stats = TrainStats()
    separate = Tokenizer.train(["ab", "ab"], 256 + 2 + N_SPECIAL, stats=stats)
    assert separate.merges == [(97, 98, 256)]  # no (b, a): it would span two documents
    assert stats.stopped_early and separate.vocab_size == 256 + 1 + N_SPECIAL


def test_array_and_string_phases_learn_the_same_merges(monkeypatch, real_text):
    """learn_merges starts on numpy position arrays and switches to strings once merges get small: forcing either
    phase for the whole run (or the switch at any point) must give the same merges, runs and `A B A B` included."""
    from lmforge.tokenizer import bpe_train

    texts = ["aaabdaaabac", "abababab aaaa aaaaa aaaaaaa", "zzz zzzz 1111 111111"] + real_text["train"][1:25]
    counts = count_chunks(texts, GPT4_PATTERN)
    learned = {}
    for threshold in (0, 40, 400, float("inf")):
        monkeypatch.setattr(bpe_train, "_ARRAY_MIN_SITES", threshold)
        learned[threshold] = learn_merges(counts, 1200)
    assert len(learned[0]) == 1200 - 256
    assert all(m == learned[0] for m in learned.values())


@pytest.mark.timeout(120)
def test_optimised_trainer_equals_reference_trainer_on_real_text(real_text):
    """bpe_train.learn_merges against reference.train_merges (minbpe's loop: every pair recounted per merge), merge
    for merge on 30 KB of real text plus the multilingual corpus; then with special-token strings in the text
    (ordinary text for training) through `Tokenizer.train`, whose vocabulary keeps the last ids for them."""
    from lmforge.tokenizer.reference import train_merges

    texts = [real_text["train"][0][:20_000]] + [t[:3000] for t in real_text["train"][1:4]] + SMALL_CORPUS
    assert learn_merges(count_chunks(texts, GPT4_PATTERN), 256 + 250) == train_merges(texts, 256 + 250)
    chat = [f"{SPECIAL_TOKENS[3]}{t[:2000]}{SPECIAL_TOKENS[5]}{SPECIAL_TOKENS[4]}ok{SPECIAL_TOKENS[5]}" for t in texts]
    tok = Tokenizer.train(chat, 256 + 150 + N_SPECIAL)
    assert tok.merges == train_merges(chat, 256 + 150)
    assert any(tok.token_bytes(n) in (b"<|", b"|>") for _, _, n in tok.merges)  # the strings were trained on


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet="ab c\n1é", max_size=40), min_size=1, max_size=8), st.integers(256, 300))
def test_optimised_trainer_equals_reference_trainer_on_any_small_corpus(texts, num_tokens):
    """Tiny alphabets make ties, `a a a` runs and tokens reached along two paths (reused ids) common."""
    from lmforge.tokenizer.reference import train_merges

    assert learn_merges(count_chunks(texts, GPT4_PATTERN), num_tokens) == train_merges(texts, num_tokens)


def test_gpt2_pattern_option(small_tok):
    tok = Tokenizer.train(SMALL_CORPUS, 400, pattern="gpt2")
    assert tok.pattern == GPT2_PATTERN and tok.pattern_name == "gpt2"
    assert small_tok.pattern == GPT4_PATTERN
    text = "He'LL pay 1234567 dollars"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode(text) == tok.reference().encode(text)


def test_special_tokens_take_the_last_ids_in_order(small_tok):
    assert list(small_tok.special_tokens) == list(SPECIAL_TOKENS)
    first = small_tok.vocab_size - N_SPECIAL
    assert list(small_tok.special_tokens.values()) == list(range(first, small_tok.vocab_size))
    assert small_tok.vocab_size == 420
    assert small_tok.bos_id == first and small_tok.pad_id == first + 1
    assert small_tok.end_id == small_tok.special_tokens["<|end|>"]
    assert len(small_tok.vocab) == small_tok.vocab_size
    for a, b, new in small_tok.merges:  # exporters rebuild the byte vocabulary from the merges
        assert small_tok.token_bytes(new) == small_tok.token_bytes(a) + small_tok.token_bytes(b)


def test_training_is_deterministic(tmp_path, real_text):
    texts = [real_text["train"][0][:300_000]] + real_text["train"][1:30]
    Tokenizer.train(texts, 1000).save(tmp_path / "a")
    Tokenizer.train(iter(texts), 1000, num_workers=2).save(tmp_path / "b")  # streamed, counted by 2 processes
    a = (tmp_path / "a" / "tokenizer.lmforge.json").read_bytes()
    assert a == (tmp_path / "b" / "tokenizer.lmforge.json").read_bytes()
    assert Tokenizer.load(tmp_path / "a").hash == Tokenizer.load(tmp_path / "b").hash


@pytest.mark.timeout(120)
def test_merges_equal_hf_tokenizers_and_rustbpe(shared_data):
    """Merge for merge on 2.2 MB of real text: `tokenizers` with byte_order="hf", rustbpe with the default."""
    from tokenizers import Regex, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    texts = [(shared_data / "pretrain/text/tinyshakespeare.txt").read_text(),
             (shared_data / "pretrain/text/war_and_peace.txt").read_text()[:1_100_000]]
    vocab = 3000
    counts = count_chunks(texts, GPT4_PATTERN)

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(GPT4_PATTERN), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=0, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    hf.train_from_iterator(texts, trainer)
    hf_merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in json.loads(hf.to_str())["model"]["merges"]]
    ours = Tokenizer(learn_merges(counts, vocab, byte_order="hf"))

    def show(i: int) -> str:
        return "".join(byte_to_char(b) for b in ours.token_bytes(i))

    assert len(hf_merges) == vocab - 256
    assert [(show(a), show(b)) for a, b, _ in ours.merges] == hf_merges

    rustbpe = pytest.importorskip("rustbpe")
    r = rustbpe.Tokenizer()
    r.train_from_iterator(iter(texts), vocab, pattern=GPT4_PATTERN)
    ours = Tokenizer(learn_merges(counts, vocab))
    assert sorted((bytes(k), v) for k, v in r.get_mergeable_ranks()) == sorted(ours.mergeable_ranks.items())


# ---------------------------------------------------------------------------------------------- encode / decode
@pytest.mark.parametrize("text", ADVERSARIAL)
def test_round_trip_adversarial(small_tok, text):
    ids = small_tok.encode(text)
    assert small_tok.decode(ids) == text
    assert ids == small_tok.reference().encode(text)
    assert all(0 <= i < small_tok.vocab_size - N_SPECIAL for i in ids)


def test_runs_of_digits_and_spaces_split_as_gpt4(small_tok):
    # digits go in groups of at most three; a run of spaces leaves its last space to the following word
    enc = small_tok.encode
    assert enc("9" * 5000) == enc("999") * 1666 + enc("99")
    assert enc(" " * 10000 + "x") == enc(" " * 9999) + enc(" x")
    assert small_tok.decode(enc(" " * 10000 + "x")) == " " * 10000 + "x"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=())))  # every code point, lone surrogates included
def test_round_trip_every_string(small_tok, text):
    ids = small_tok.encode(text)
    assert small_tok.decode(ids) == text
    assert ids == small_tok.reference().encode(text)
    assert ids == small_tok.encode_batch([text, text], num_threads=2)[1]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 419 - N_SPECIAL), max_size=40))
def test_stream_decoder_matches_decode_on_any_ids(small_tok, ids):
    dec = small_tok.decoder()
    pieces = [dec.feed(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == small_tok.decode(ids)


def test_stream_decoder_never_splits_a_character(small_tok):
    text = "日本語 😀👩‍👧 café ❤️ 한국어 " * 3
    ids = small_tok.encode(text)
    assert any(not _valid_utf8(small_tok.token_bytes(i)) for i in ids)  # some token holds part of a character
    dec = small_tok.decoder()
    pieces = [dec.feed(i) for i in ids]
    pieces.append(dec.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_decode_of_invalid_bytes_replaces(small_tok):
    assert small_tok.decode([0xE6, 0x97]) == "\ufffd"  # a cut character
    assert small_tok.decode([ord("a"), 0xFF, ord("b")]) == "a\ufffdb"
    with pytest.raises(ValueError):
        small_tok.decode([small_tok.vocab_size])


# ------------------------------------------------------------------------------------------- custom split patterns
# Patterns that leave characters unmatched, match the empty string, hold a capture group or only look around: with
# `findall` or tiktoken's own split they lost text (`Hello World 123!` -> `elloorld`) or panicked in Rust.
CUSTOM_PATTERNS = [r"[a-z]+(?= )", r"\w*", r"(\w+)|\s", r"(?=a)", r"\p{L}+", r"\d|(?<=x)"]


@pytest.fixture(scope="module")
def custom_toks() -> dict[str, Tokenizer]:
    return {p: Tokenizer.train(SMALL_CORPUS + ["Hello World 123! bab abba"], 330, pattern=p) for p in CUSTOM_PATTERNS}


def test_custom_pattern_keeps_every_character(custom_toks, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    tok = custom_toks[r"[a-z]+(?= )"]
    assert tok.pattern_name == "custom"
    text = "Hello World 123!"
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.pattern == r"[a-z]+(?= )" and loaded.encode(text) == tok.encode(text)
    for pattern, tok in custom_toks.items():  # the exported tokenizer.json cuts at the same places
        hf = HFTokenizer.from_file(str(tok.export_hf(tmp_path / "hf.json")))
        for text in SMALL_CORPUS + ["Hello World 123!", "bab", "abba  b", "x1x2"]:
            assert hf.encode(text).ids == tok.encode(text), (pattern, text)


@pytest.mark.parametrize("pattern, message", [
    (r"\h+", "splits"),  # horizontal space to Python's regex, a hex digit to Oniguruma
    (r"(?V1)[[a-z]--[aeiou]]+", "Oniguruma"),  # set difference: Python's regex only
])
def test_hf_export_refuses_a_pattern_hugging_face_would_split_otherwise(tmp_path, pattern, message):
    tok = Tokenizer.train(SMALL_CORPUS, 300, pattern=pattern)
    assert tok.decode(tok.encode(SMALL_CORPUS[0])) == SMALL_CORPUS[0]
    with pytest.raises(LmforgeError, match=message):
        tok.export_hf(tmp_path / "tokenizer.json")
    assert not (tmp_path / "tokenizer.json").exists()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(CUSTOM_PATTERNS), st.text(alphabet=st.characters(blacklist_categories=())))
def test_custom_pattern_round_trips_every_string(custom_toks, pattern, text):
    import regex

    from lmforge.tokenizer.patterns import split_chunks

    chunks = split_chunks(regex.compile(pattern), text)
    assert "".join(chunks) == text and "" not in chunks
    tok = custom_toks[pattern]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == tok.reference().encode(text)
    text = f"<|user|>{text}<|end|>"
    assert tok.encode(text, allowed_special="all") == tok.reference().encode(text, allowed_special=set(SPECIAL_TOKENS))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([GPT4_PATTERN, GPT2_PATTERN]), st.text(alphabet=st.characters(blacklist_categories=())))
def test_builtin_patterns_cover_every_string_by_themselves(pattern, text):
    """Why the built-in patterns keep `findall` and tiktoken's own split: they match every character, never match
    empty and hold no group, so `findall` yields exactly the chunks that `split_chunks` defines."""
    import regex

    from lmforge.tokenizer.patterns import chunk_splitter, split_chunks

    compiled = regex.compile(pattern)
    assert chunk_splitter(pattern)(text) == split_chunks(compiled, text)
    assert "".join(compiled.findall(text)) == text and "" not in compiled.findall(text)


# ---------------------------------------------------------------------------------------------- special tokens
@pytest.mark.parametrize("name", SPECIAL_TOKENS)
def test_special_token_injection_is_impossible_by_default(small_tok, name):
    text = f"user says {name} and <|assistant_start|>"
    ids = small_tok.encode(text)
    assert small_tok.special_tokens[name] not in ids
    assert all(i < small_tok.vocab_size - N_SPECIAL for i in ids)
    assert small_tok.decode(ids) == text
    assert small_tok.encode_batch([text])[0] == ids
    allowed = small_tok.encode(text, allowed_special={name})
    assert allowed.count(small_tok.special_tokens[name]) == 1
    assert allowed == small_tok.reference().encode(text, allowed_special={name})
    assert small_tok.decode(allowed) == text


def test_allowed_special_all_and_unknown(small_tok):
    ids = small_tok.encode("<|bos|>hi<|end|>", allowed_special="all")
    assert ids[0] == small_tok.bos_id and ids[-1] == small_tok.end_id
    with pytest.raises(ValueError, match="unknown special"):
        small_tok.encode("x", allowed_special={"<|nope|>"})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(list(SPECIAL_TOKENS) + ["<|", "|>", "a", " ", "é"]), max_size=20).map("".join))
def test_no_text_encodes_to_a_special_id(small_tok, text):
    assert max(small_tok.encode(text), default=0) < small_tok.vocab_size - N_SPECIAL


# ------------------------------------------------------------------------------------- parity on real text
def test_reference_tiktoken_and_hf_export_agree_on_real_text(tmp_path, real_tok, real_text):
    from tokenizers import Tokenizer as HFTokenizer

    held_out = real_text["held_out"]
    ids = real_tok.encode(held_out)
    assert real_tok.decode(ids) == held_out
    assert ids == real_tok.reference().encode(held_out)
    path = real_tok.export_hf(tmp_path / "tokenizer.json")
    hf = HFTokenizer.from_file(str(path))
    lines = held_out.splitlines(keepends=True)
    docs = ["".join(lines[i : i + 50]) for i in range(0, len(lines), 50)]
    assert [e.ids for e in hf.encode_batch(docs)] == real_tok.encode_batch(docs)
    assert hf.decode(ids[:5000]) == real_tok.decode(ids[:5000])
    assert {n: hf.token_to_id(n) for n in SPECIAL_TOKENS} == real_tok.special_tokens


def test_hf_export_loads_in_transformers(tmp_path, small_tok):
    from transformers import PreTrainedTokenizerFast

    path = small_tok.export_hf(tmp_path / "tokenizer.json")
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|bos|>", pad_token="<|pad|>", eos_token="<|end|>")
    for text in SMALL_CORPUS + ADVERSARIAL[:15]:
        assert fast(text, add_special_tokens=False)["input_ids"] == small_tok.encode(text)
    assert fast.bos_token_id == small_tok.bos_id and fast.pad_token_id == small_tok.pad_id
    assert len(fast) == small_tok.vocab_size


def test_compression_on_real_text(real_tok, real_text):
    held_out = real_text["held_out"].encode("utf-8")
    assert len(held_out) / len(real_tok.encode(real_text["held_out"])) > 2.0  # bytes stay 1.0


# ------------------------------------------------------------------------------------------------- files and errors
def test_save_load_round_trip(tmp_path, small_tok):
    small_tok.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.merges == small_tok.merges and loaded.special_tokens == small_tok.special_tokens
    assert loaded.hash == small_tok.hash and loaded.pattern_name == "gpt4"
    assert loaded.encode(SMALL_CORPUS[3]) == small_tok.encode(SMALL_CORPUS[3])


def _corrupt(tmp_path: Path, tok: Tokenizer, edit) -> Path:
    d = tmp_path / "bad"
    tok.save(d)
    f = d / "tokenizer.lmforge.json"
    data = json.loads(f.read_text())
    edit(data)
    f.write_text(json.dumps(data))
    return d


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(version=99), "version"),
        (lambda d: d.pop("merges"), "merges"),
        (lambda d: d["merges"].__setitem__(0, [1, 2]), "merges"),
        (lambda d: d["merges"].__setitem__(3, [5000, 2, 259]), "merges"),
        (lambda d: d["merges"].__setitem__(3, [1, 2, 7]), "merges"),
        (lambda d: d.update(vocab_size=123), "vocab_size"),
        (lambda d: d["special_tokens"].update({"<|bos|>": 0}), "special_tokens"),
        (lambda d: d.update(pattern="(unclosed"), "pattern"),
    ],
)
def test_corrupt_tokenizer_file_is_a_clear_error(tmp_path, small_tok, edit, message):
    d = _corrupt(tmp_path, small_tok, edit)
    with pytest.raises(LmforgeError, match=message):
        Tokenizer.load(d)


def test_missing_or_unparsable_tokenizer(tmp_path):
    with pytest.raises(LmforgeError, match="not found"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.lmforge.json").write_text('{"format": "lmforge-bpe", "merges": [')
    with pytest.raises(LmforgeError, match="corrupt"):
        Tokenizer.load(tmp_path)


def test_bad_training_input():
    with pytest.raises(LmforgeError, match="too small"):
        Tokenizer.train(["abc"], 256 + N_SPECIAL - 1)
    with pytest.raises(LmforgeError, match="no training text"):
        Tokenizer.train(["", ""], 1000)
    with pytest.raises(LmforgeError, match="pattern"):
        Tokenizer.train(["abc"], 1000, pattern="[unclosed")
    with pytest.raises(TypeError, match="iterable of documents"):
        Tokenizer.train("one string is not a corpus", 1000)
    with pytest.raises(TypeError, match="must be str"):
        Tokenizer.train([b"bytes"], 1000)
    with pytest.raises(TypeError, match="must be str"):  # the counting processes are stopped, nothing hangs
        Tokenizer.train(iter(["text"] * 3 + [None]), 1000, num_workers=2)


# ------------------------------------------------------------------------------------------------------ the CLI
def test_cli_train_show_encode_decode_export(tmp_path, capsys):
    from lmforge.cli import main

    (tmp_path / "a.txt").write_text(SMALL_CORPUS[0] + SMALL_CORPUS[3])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        for t in SMALL_CORPUS:
            f.write(json.dumps({"text": t}) + "\n")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl.gz"),
                 "--vocab-size", "400", "--out", str(out)]) == 0
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 400
    capsys.readouterr()
    assert main(["tokenizer", "show", "--tokenizer", str(out), "hello 日本 <|bos|>"]) == 0
    shown = capsys.readouterr().out
    assert "bytes/token" in shown and "tokens" in shown
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "hello world"]) == 0
    ids = capsys.readouterr().out.split()
    assert [int(i) for i in ids] == tok.encode("hello world")
    assert main(["tokenizer", "decode", "--tokenizer", str(out), *ids]) == 0
    assert capsys.readouterr().out == "hello world\n"
    assert main(["tokenizer", "export-hf", "--tokenizer", str(out), "--out", str(tmp_path / "hf.json")]) == 0
    assert (tmp_path / "hf.json").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    from lmforge.cli import main

    (tmp_path / "empty.txt").write_text("")
    cases = [
        (["tokenizer", "train", "--input", str(tmp_path / "missing.txt"), "--vocab-size", "500", "--out", str(tmp_path / "o")], "missing.txt"),
        (["tokenizer", "train", "--input", str(tmp_path / "empty.txt"), "--vocab-size", "500", "--out", str(tmp_path / "o")], "empty"),
        (["tokenizer", "train", "--input", str(tmp_path / "empty.txt"), "--vocab-size", "100", "--out", str(tmp_path / "o")], "too small"),
        (["tokenizer", "show", "--tokenizer", str(tmp_path), "x"], "not found"),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1


def test_speedrun_stage_trains_on_data_documents(tmp_path):
    from lmforge.speedrun import SpeedrunContext
    from lmforge.speedrun.corpus import stage_tokenizer

    docs = tmp_path / "kept.jsonl.gz"
    with gzip.open(docs, "wt", encoding="utf-8") as f:
        for t in SMALL_CORPUS * 3:
            f.write(json.dumps({"text": t, "id": "x"}) + "\n")
    ctx = SpeedrunContext(out=tmp_path, threads=1, preset="smoke", results={"data": {"documents": [str(docs)]}})
    (tmp_path / "stage").mkdir()
    result = stage_tokenizer(ctx, tmp_path / "stage")
    tok = Tokenizer.load(result["tokenizer_dir"])
    assert result["vocab_size"] == tok.vocab_size and result["tokenizer_hash"] == tok.hash
    assert "bytes/token" in (tmp_path / "stage" / "explorer.txt").read_text()


def test_recount_keeps_pair_counts_exact():
    """The fallback used when a merge reuses an existing id: counts of the rewritten chunk are recounted."""
    from collections import defaultdict

    from lmforge.tokenizer.bpe_train import _recount

    old, new, N = "xabyab", "xNyN", "N"  # N already present elsewhere is why the neighbour rule is not used
    pair_counts = defaultdict(int, {"xa": 3, "ab": 6, "by": 3, "ya": 3})
    new_counts, new_where = defaultdict(int), defaultdict(list)
    _recount(old, new, 3, N, pair_counts, new_counts, new_where, 7)
    assert {k: v for k, v in pair_counts.items() if v} == {}
    assert dict(new_counts) == {"xN": 3, "Ny": 3, "yN": 3} and new_where["xN"] == [7]
