"""The `Tokenizer`: byte-level BPE trained by us, encoded by tiktoken, saved as one JSON file.

Every later stage calls this API (see DEVELOPERS.md), so it stays small:

    tok = Tokenizer.train(texts, vocab_size=4096)          # or Tokenizer.load(dir)
    ids = tok.encode("hello <|user|>")                      # special-looking text is ordinary text by default
    ids = tok.encode("<|user|>hi", allowed_special="all")   # ... unless the caller allows it
    text = tok.decode(ids)
    dec = tok.decoder(); pieces = [dec.feed(i) for i in ids] + [dec.flush()]   # streaming, never splits a char
    tok.save(dir); tok.special_tokens; tok.vocab_size; tok.bos_id; tok.pad_id

Ids: 0..255 are the bytes (id = byte value); 256.. the learned tokens in the order they were learned (id = rank:
a lower id was merged earlier); the special tokens take the last ids, in the fixed order of `SPECIAL_TOKENS`.
For exporters (the C runner): `tok.merges` lists `(left_id, right_id, new_id)` in training order,
`tok.token_bytes(id)` gives any token's bytes (a special token's are its UTF-8 name) and `tok.vocab` all of them.
Encoding follows tiktoken's rule (see `reference.py`): within a chunk, repeatedly merge the adjacent pair whose
concatenated bytes have the lowest id. `tok.hf_merges()` gives the merge list that reproduces that rule in a
merges-based BPE (Hugging Face, GGUF); `tok.hash` identifies the tokenizer (sha256 of its saved file).

Strings that are not valid Unicode: a Python `str` may hold lone surrogates (U+D800..U+DFFF, e.g. from
`json.loads('"\\ud800"')`). We keep them rather than fail or silently replace them: each becomes the byte tokens of
its 3-byte `surrogatepass` form, and `decode` turns exactly those bytes back into the surrogate, so
`decode(encode(s)) == s` for every Python string. The price: ids that spell such bytes decode to a string with a
lone surrogate, which a strict UTF-8 writer refuses (print with `errors="replace"` if ids come from a model).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Collection, Iterable, Literal

from lmforge.tokenizer.bpe_train import Merge, TrainStats, byte_to_char, count_chunks, learn_merges
from lmforge.tokenizer.patterns import GPT4_PATTERN, covers_by_itself, resolve_pattern
from lmforge.tokenizer.reference import SURROGATES, ReferenceEncoder
from lmforge.utils import LmforgeError, atomic_path, atomic_write, default_threads

# Fixed names and order (DEVELOPERS.md); they take the last ids of the vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|tool_call|>",
    "<|tool_call_end|>",
    "<|tool_output|>",
    "<|tool_output_end|>",
)
FILE_NAME = "tokenizer.lmforge.json"
FORMAT = "lmforge-bpe"
FORMAT_VERSION = 1


def _wtf8_errors(exc: UnicodeError) -> tuple[str, int]:
    """Decoding error handler: a 3-byte surrogate form becomes that surrogate, any other bad byte U+FFFD.

    `encode` writes a lone surrogate as its `surrogatepass` bytes (ED A0..BF 80..BF); this turns them back, so
    every Python string round-trips. Invalid bytes that a model emits (e.g. half a character) still decode, as
    the replacement character, one per maximal invalid sequence as the `replace` handler does.
    """
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    data, start = exc.object, exc.start
    if start + 3 <= len(data) and data[start] == 0xED and 0xA0 <= data[start + 1] <= 0xBF and 0x80 <= data[start + 2] <= 0xBF:
        return bytes(data[start : start + 3]).decode("utf-8", "surrogatepass"), start + 3
    return "\ufffd", exc.end


ERRORS = "lmforge.wtf8"
codecs.register_error(ERRORS, _wtf8_errors)


# The trainer holds each token as one Unicode character (bpe_train._char), which bounds the ids below 0x10F800;
# 2^20 is the round bound under that (GPT-4o's vocabulary is 200k).
MAX_VOCAB_SIZE = 1 << 20


def check_vocab_size(vocab_size: int, what: str = "vocab_size") -> None:
    """Refuse a vocabulary size outside [256 bytes + the special tokens, MAX_VOCAB_SIZE]; `what` names the flag."""
    min_size = 256 + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise LmforgeError(f"{what} must be an integer, got {vocab_size!r}")
    if vocab_size < min_size:
        raise LmforgeError(f"{what} {vocab_size} is too small: at least {min_size} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    if vocab_size > MAX_VOCAB_SIZE:
        raise LmforgeError(f"{what} {vocab_size} is too large: at most {MAX_VOCAB_SIZE} (the trainer holds a token as "
                           "one Unicode character)")


# Texts the exported tokenizer.json must encode exactly as `encode` does: letters in several scripts and cases,
# contractions, digit runs, punctuation, whitespace runs, line ends, combining marks, emoji and control characters.
HF_PROBES = (
    "Hello World 123! He'LL pay 1234567 dollars, isn't it?  Tabs\tand\r\nnew lines\n\n  end ",
    "日本語のテキスト 中文 한국어 — “quotes” café e\u0301 😀👩‍👧 \x00\x1b[31m 3.14 100,000",
)


class StreamDecoder:
    """Turns a stream of token ids into text pieces without ever cutting a multi-byte character.

    A token may end in the middle of a UTF-8 character (byte-level BPE); the incomplete tail is held back until
    the bytes that complete it arrive. `"".join(feed(i) for i in ids) + flush()` equals `decode(ids)`.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._pending = b""

    def feed(self, token_id: int) -> str:
        data = self._pending + self._tok.token_bytes(token_id)
        cut = _complete_prefix(data)
        self._pending = data[cut:]
        return data[:cut].decode("utf-8", ERRORS)

    def flush(self) -> str:
        """The held-back bytes (an unfinished character at the end of the stream) as replacement text."""
        data, self._pending = self._pending, b""
        return data.decode("utf-8", ERRORS)


def _complete_prefix(data: bytes) -> int:
    """Length of `data` without a trailing, still incomplete UTF-8 sequence (its lead byte and continuations)."""
    n = len(data)
    for k in range(1, min(4, n) + 1):
        b = data[n - k]
        if 0x80 <= b < 0xC0:  # continuation byte: look further back for the lead
            continue
        need = 2 if 0xC0 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF8 else 1
        return n - k if need > k else n
    return n


class _CustomPatternCore(ReferenceEncoder):
    """The encoder of a tokenizer with a custom split pattern: the reference encoder's split (gaps between matches
    kept, so no text is lost), its special-token and surrogate rules, and tiktoken's Rust BPE for each chunk.

    It answers the two calls `Tokenizer.encode` makes on tiktoken's CoreBPE, `encode_ordinary(text)` and
    `encode(text, allowed)`, so the built-in patterns keep their all-Rust path untouched.
    """

    def __init__(self, core, ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int]):
        super().__init__(ranks, pattern, special_tokens)
        self._encode_piece = core.encode_single_piece  # tiktoken's rule (reference.py, rule 4) on one chunk

    def _encode_valid(self, text: str) -> list[int]:
        encode_piece = self._encode_piece
        return [i for chunk in self._split(text) for i in encode_piece(chunk.encode("utf-8"))]


class Tokenizer:
    """Byte-level BPE with the GPT-4 split pattern and the fixed special tokens; see the module docstring."""

    def __init__(self, merges: Iterable[Merge], pattern: str = "gpt4"):
        self.pattern_name, self.pattern = resolve_pattern(pattern)
        self.merges: list[Merge] = []
        vocab: list[bytes] = [bytes([b]) for b in range(256)]
        ranks: dict[bytes, int] = {t: i for i, t in enumerate(vocab)}
        for k, merge in enumerate(merges):
            if len(merge) != 3 or not all(isinstance(x, int) and not isinstance(x, bool) for x in merge):
                raise ValueError(f"merge {k} is not three integer ids: {merge!r}")
            a, b, new = merge
            if not (0 <= a < len(vocab) and 0 <= b < len(vocab)):
                raise ValueError(f"merge {k} ({a}, {b}) uses an id that is not defined yet")
            data = vocab[a] + vocab[b]
            if new == len(vocab) and data not in ranks:
                vocab.append(data)
                ranks[data] = new
            elif ranks.get(data) != new:
                raise ValueError(f"merge {k} ({a}, {b}) -> {new}: expected new id {len(vocab)} or the existing id of its bytes")
            self.merges.append((a, b, new))
        self._vocab = vocab
        self._ranks = ranks
        self.special_tokens: dict[str, int] = {name: len(vocab) + i for i, name in enumerate(SPECIAL_TOKENS)}
        self._id_to_special = {i: name.encode("utf-8") for name, i in self.special_tokens.items()}
        self._core = None  # tiktoken's Rust CoreBPE (or, for a custom pattern, _CustomPatternCore), set on first encode
        self._reference: ReferenceEncoder | None = None

    # ----------------------------------------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        pattern: str = "gpt4",
        num_workers: int = 1,
        byte_order: Literal["bytes", "hf"] = "bytes",
        progress: bool = False,
        stats: TrainStats | None = None,
    ) -> Tokenizer:
        """Learn a vocabulary of `vocab_size` ids (256 bytes + merges + the special tokens) from documents.

        `texts` is consumed once, as a stream; each item is one document (chunks never span two). `num_workers`
        processes count chunks in parallel (worth it from tens of MB). `byte_order` picks the tie-break among pairs
        of equal count: `"bytes"` (rustbpe's) or `"hf"` (Hugging Face tokenizers'); see `bpe_train`. If the
        corpus runs out of pairs first, the vocabulary is smaller (`stats.stopped_early`).
        """
        check_vocab_size(vocab_size)
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be an iterable of documents (e.g. a list of str), not one string")
        _, regex_str = resolve_pattern(pattern)
        chunk_counts = count_chunks(texts, regex_str, num_workers=num_workers, progress=progress)
        if not chunk_counts:
            raise LmforgeError("no training text: every document was empty")
        merges = learn_merges(chunk_counts, vocab_size - len(SPECIAL_TOKENS), byte_order=byte_order, progress=progress, stats=stats)
        return cls(merges, pattern)

    # ------------------------------------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        """All ids, special tokens included (ids are 0 .. vocab_size - 1)."""
        return len(self._vocab) + len(SPECIAL_TOKENS)

    @property
    def bos_id(self) -> int:
        return self.special_tokens["<|bos|>"]

    @property
    def pad_id(self) -> int:
        return self.special_tokens["<|pad|>"]

    @property
    def end_id(self) -> int:
        """`<|end|>`: ends a turn; generation stops on it."""
        return self.special_tokens["<|end|>"]

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one id (a special token's bytes are its UTF-8 name)."""
        if 0 <= token_id < len(self._vocab):
            return self._vocab[token_id]
        special = self._id_to_special.get(token_id)
        if special is None:
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
        return special

    @property
    def vocab(self) -> list[bytes]:
        """Bytes of every id in order, special tokens last (as their UTF-8 names)."""
        return self._vocab + [name.encode("utf-8") for name in SPECIAL_TOKENS]

    def is_special(self, token_id: int) -> bool:
        return token_id in self._id_to_special

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """bytes -> id of the ordinary tokens (tiktoken's `mergeable_ranks`)."""
        return dict(self._ranks)

    # ---------------------------------------------------------------------------------------------- encoding
    def _build_core(self):
        """tiktoken's Rust encoder over our ranks (no download), built on first use.

        A built-in pattern splits in Rust too. A custom one never reaches tiktoken's regex (which drops the text
        between matches and panics on an empty match): `_CustomPatternCore` splits by construction in Python.
        """
        import tiktoken

        own_split = covers_by_itself(self.pattern)
        encoding = tiktoken.Encoding(
            name=f"lmforge-{self.pattern_name}-{self.vocab_size}",
            pat_str=self.pattern if own_split else GPT4_PATTERN,  # unused for a custom pattern: pieces come split
            mergeable_ranks=self._ranks,
            special_tokens=self.special_tokens,
        )
        core = encoding._core_bpe
        self._core = core if own_split else _CustomPatternCore(core, self._ranks, self.pattern, self.special_tokens)
        return self._core

    def reference(self) -> ReferenceEncoder:
        """The pure-Python encoder (the specification); slow, for tests and reading."""
        if self._reference is None:
            self._reference = ReferenceEncoder(self._ranks, self.pattern, self.special_tokens)
        return self._reference

    def _allowed(self, allowed_special: Literal["all"] | Collection[str]) -> frozenset[str]:
        if allowed_special == "all":
            return frozenset(self.special_tokens)
        allowed = frozenset(allowed_special)
        unknown = allowed - self.special_tokens.keys()
        if unknown:
            raise ValueError(f"unknown special tokens {sorted(unknown)}; known: {list(self.special_tokens)}")
        return allowed

    def encode(self, text: str, allowed_special: Literal["all"] | Collection[str] = ()) -> list[int]:
        """Token ids of `text`. Special-token strings are ordinary text unless listed in `allowed_special`
        (names such as `{"<|user|>"}`, or `"all"`): user text can never forge a special token by default."""
        # tiktoken's Rust core directly, with nothing else on the common path; it refuses a str holding lone
        # surrogates (not valid UTF-8), which then take the slow path. (tiktoken's wrapper would replace them.)
        if not allowed_special:
            try:
                return self._core.encode_ordinary(text)
            except UnicodeEncodeError:
                return self._encode_with_surrogates(text, frozenset())
            except AttributeError:
                if self._core is not None:
                    raise
                self._build_core()  # first call: the Encoding is built lazily
                return self.encode(text)
        allowed = self._allowed(allowed_special)
        core = self._core if self._core is not None else self._build_core()
        try:
            return core.encode(text, allowed)
        except UnicodeEncodeError:
            return self._encode_with_surrogates(text, allowed)

    def _encode_with_surrogates(self, text: str, allowed: frozenset[str]) -> list[int]:
        # Lone surrogates are hard cuts that become their 3 surrogatepass bytes (see reference.py, rule 2).
        ids: list[int] = []
        start = 0
        for m in SURROGATES.finditer(text):
            ids += self.encode(text[start : m.start()], allowed)
            ids += list(m.group().encode("utf-8", "surrogatepass"))
            start = m.end()
        return ids + self.encode(text[start:], allowed)

    def encode_batch(
        self, texts: Iterable[str], allowed_special: Literal["all"] | Collection[str] = (), num_threads: int | None = None
    ) -> list[list[int]]:
        """`encode` of many texts on `num_threads` threads (default: `LMFORGE_THREADS` or all cores); tiktoken
        releases the GIL while it encodes, so threads scale."""
        texts = list(texts)
        allowed = self._allowed(allowed_special) if allowed_special else frozenset()
        num_threads = num_threads or default_threads()
        if num_threads <= 1 or len(texts) <= 1:
            return [self.encode(t, allowed) for t in texts]
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(lambda t: self.encode(t, allowed), texts, chunksize=max(1, len(texts) // (8 * num_threads))))

    # ---------------------------------------------------------------------------------------------- decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        try:
            return b"".join([self._vocab[i] if 0 <= i < len(self._vocab) else self.token_bytes(i) for i in ids])
        except TypeError as e:
            raise ValueError(f"token ids must be integers: {e}") from e

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`. Bytes that are not valid UTF-8 (a model may emit half a character) become U+FFFD;
        lone surrogates that `encode` wrote come back as themselves."""
        return self.decode_bytes(ids).decode("utf-8", ERRORS)

    def decoder(self) -> StreamDecoder:
        """A streaming decoder: `.feed(id) -> str` as tokens arrive, `.flush()` at the end."""
        return StreamDecoder(self)

    # ------------------------------------------------------------------------------------------------- files
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "pattern_name": self.pattern_name,
            "pattern": self.pattern,
            "vocab_size": self.vocab_size,
            "special_tokens": self.special_tokens,
            "merges": [list(m) for m in self.merges],
        }

    def _serialize(self) -> bytes:
        d = self.to_dict()
        merges = d.pop("merges")
        head = json.dumps(d, indent=2, ensure_ascii=False)[:-2]  # reopen the object to append the merges
        body = ",\n".join(f"    [{a}, {b}, {n}]" for a, b, n in merges)
        return f'{head},\n  "merges": [\n{body}\n  ]\n}}\n'.encode("utf-8")

    @property
    def hash(self) -> str:
        """sha256 of the saved file: same tokenizer, same hash (token shards record it)."""
        return hashlib.sha256(self._serialize()).hexdigest()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/tokenizer.lmforge.json` atomically (one file: pattern, special tokens, merges)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_write(directory / FILE_NAME, "wb") as f:
            f.write(self._serialize())
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        """Load a saved tokenizer directory (or the file itself), offline; `LmforgeError` names what is wrong."""
        path = Path(directory)
        if path.is_dir():
            path = path / FILE_NAME
        if not path.is_file():
            raise LmforgeError(f"tokenizer file not found: {path} (train one with `lmforge tokenizer train`)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LmforgeError(f"tokenizer file {path} is corrupt: {e}") from e
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise LmforgeError(f"tokenizer file {path}: field 'format' must be {FORMAT!r}")
        if d.get("version") != FORMAT_VERSION:
            raise LmforgeError(f"tokenizer file {path}: unsupported 'version' {d.get('version')!r} (this lmforge reads {FORMAT_VERSION})")
        for key, typ in (("pattern", str), ("merges", list), ("vocab_size", int), ("special_tokens", dict)):
            if not isinstance(d.get(key), typ):
                raise LmforgeError(f"tokenizer file {path}: field {key!r} is missing or not a {typ.__name__}")
        resolve_pattern(d["pattern"], what=f"tokenizer file {path}: field 'pattern'")
        try:
            tok = cls([tuple(m) if isinstance(m, list) else m for m in d["merges"]], d["pattern"])
        except (ValueError, TypeError) as e:
            raise LmforgeError(f"tokenizer file {path}: field 'merges' is invalid: {e}") from e
        if tok.vocab_size != d["vocab_size"]:
            raise LmforgeError(f"tokenizer file {path}: field 'vocab_size' is {d['vocab_size']} but the merges give {tok.vocab_size}")
        if d["special_tokens"] != tok.special_tokens:
            raise LmforgeError(f"tokenizer file {path}: field 'special_tokens' differs from the fixed names and ids {tok.special_tokens}")
        return tok

    # ------------------------------------------------------------------------------------- Hugging Face export
    def hf_merges(self) -> list[tuple[int, int]]:
        """One merge per token, the pair tiktoken's rule joins last when it builds that token from its bytes.

        Hugging Face's BPE applies merges by their rank in this list; ranking each token's final pair by the
        token's id reproduces tiktoken's "lowest id first" rule (with `ignore_merges`, a chunk that is a whole
        token is that token, as in tiktoken). A token that the rule cannot build gets no merge, as in tiktoken.
        """
        out = []
        for token_id in range(256, len(self._vocab)):
            parts = _bpe_parts(self._vocab[token_id], self._ranks, token_id)
            if len(parts) == 2:
                out.append((self._ranks[parts[0]], self._ranks[parts[1]]))
        return out

    def export_hf(self, path: str | os.PathLike) -> Path:
        """Write a Hugging Face `tokenizer.json` (ByteLevel BPE, same split regex and special tokens).

        Loads with `tokenizers.Tokenizer.from_file` and `transformers.PreTrainedTokenizerFast(tokenizer_file=...)`
        and gives the same ids as `encode` on text without special-token strings. (Hugging Face always treats
        special-token strings in text as special; `encode` does only when allowed.)
        """
        try:
            from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError as e:  # pragma: no cover - depends on the install
            raise LmforgeError("export to Hugging Face needs the `tokenizers` package: pip install 'lmforge[hf]'") from e
        chars = [byte_to_char(b) for b in range(256)]

        def show(data: bytes) -> str:
            return "".join(chars[b] for b in data)

        vocab = {show(t): i for i, t in enumerate(self._vocab)}
        merges = [(show(self._vocab[a]), show(self._vocab[b])) for a, b in self.hf_merges()]
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
        try:
            split = pre_tokenizers.Split(Regex(self.pattern), behavior="isolated", invert=False)
        except Exception as e:  # tokenizers raises a bare Exception for a regex Oniguruma cannot compile
            raise LmforgeError(f"split pattern {self.pattern!r} is not a regex Hugging Face's engine (Oniguruma) "
                               f"accepts: {e}") from e
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]
        )
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in SPECIAL_TOKENS])
        got = {name: hf.token_to_id(name) for name in SPECIAL_TOKENS}
        if got != self.special_tokens:  # pragma: no cover - a tokenizers behaviour change
            raise RuntimeError(f"tokenizers assigned special ids {got}, expected {self.special_tokens}")
        for probe in HF_PROBES:  # a regex may mean something else to Oniguruma: never write a file that splits otherwise
            if hf.encode(probe).ids != self.encode(probe):
                raise LmforgeError(f"split pattern {self.pattern!r} splits {probe!r} differently in Hugging Face's "
                                   "regex engine (Oniguruma); tokenizer.json not written")
        path = Path(path)
        with atomic_path(path) as tmp:
            hf.save(str(tmp))
        return path

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, pattern={self.pattern_name!r}, merges={len(self.merges)})"


def _bpe_parts(data: bytes, ranks: dict[bytes, int], max_rank: int) -> list[bytes]:
    """tiktoken's rule on `data` using only tokens of id < `max_rank`: stops when no such pair is left."""
    parts = [data[i : i + 1] for i in range(len(data))]
    while len(parts) > 1:
        best, best_i = max_rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], max_rank)
            if r < best:
                best, best_i = r, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts
