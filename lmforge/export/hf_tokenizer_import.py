"""A Hugging Face `tokenizer.json` (byte-level BPE: GPT-2, Llama 3, Qwen, our own export) as an lmforge `Tokenizer`.

lmforge's tokenizer fixes its id layout (see `lmforge.tokenizer.tokenizer`): ids 0..255 are the bytes, then one id
per merge in merge order, then the ten special tokens. A Hugging Face vocabulary numbers its tokens its own way,
so importing one is a renumbering: `TokenizerImport.lmforge_ids[i]` is the lmforge id of Hugging Face id i, and the
model's embedding and output rows are permuted by it (`hf_import`).

What is converted, and what is refused (one line naming the field):
- `model` must be BPE over the 256 byte-level characters (GPT-2's byte-to-character map), without `byte_fallback`;
  every vocabulary entry must be a byte or the result of a merge (else no lmforge id could reach it).
- `pre_tokenizer` must be `ByteLevel` with its own regex (GPT-2's split), or a `Split` on a regex followed by
  `ByteLevel` without one (Llama 3, Qwen): that regex becomes the tokenizer's split pattern.
- `normalizer`: none, NFC (Qwen's; lmforge does not normalise, so text that is not NFC may encode differently,
  which the import says), or the escape that lmforge's own export adds (a no-op on text without U+FDD0).
- Special tokens: lmforge's own names map to themselves (a folder lmforge exported); otherwise `<|bos|>`,
  `<|end|>` and `<|pad|>` take the folder's bos, eos and pad tokens (tokenizer_config.json, then config.json). The
  other chat tokens are new: their rows start at the mean of the vocabulary's (so a greedy choice never changes)
  and fine-tuning teaches them. Added tokens with no lmforge counterpart are dropped; the import lists them.

Merge order is not quite the same rule as tiktoken's "merge the pair whose result has the lowest id" (which lmforge
encodes with); they agree on tokenizers converted from tiktoken (Llama 3, Qwen) and, as a rule, on trained ones.
The import checks it: probe texts must encode to the same ids through `tokenizers` and the converted tokenizer, or
nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.export.hf import NORMALIZER
from lmforge.tokenizer.bpe_train import byte_to_char
from lmforge.tokenizer.patterns import GPT2_PATTERN
from lmforge.tokenizer.tokenizer import HF_PROBES, SPECIAL_TOKENS, Tokenizer
from lmforge.utils import LmforgeError, read_json

# Beyond the tokenizer's own probes: code, markup, numbers and repeated letters, where merge orders differ first.
PROBES = HF_PROBES + (
    "def main(argv: list[str]) -> int:\n    return 0  # done\n\n<div class=\"x\">aaaa bbbbbb</div>",
    "The quick brown fox jumps over the lazy dog. 2024-01-31 12:45 $3.50 100% I'm you're we'll they'd",
)
ROLE_KEYS = {"<|bos|>": "bos", "<|end|>": "eos", "<|pad|>": "pad"}


@dataclass
class TokenizerImport:
    """The converted tokenizer and how Hugging Face ids map onto it."""

    tokenizer: Tokenizer
    lmforge_ids: dict[int, int]  # Hugging Face id -> lmforge id, for every token that has one
    new_specials: list[str] = field(default_factory=list)  # lmforge special tokens with no Hugging Face row
    dropped: list[str] = field(default_factory=list)  # Hugging Face added tokens with no lmforge counterpart
    notes: list[str] = field(default_factory=list)


def _special_names(folder: Path, added: dict[str, int]) -> dict[str, str]:
    """lmforge special name -> the Hugging Face token string it takes, by name or by role."""
    if all(name in added for name in SPECIAL_TOKENS):
        return {name: name for name in SPECIAL_TOKENS}
    tcfg = read_json(folder / "tokenizer_config.json", "tokenizer config") \
        if (folder / "tokenizer_config.json").is_file() else {}
    mcfg = read_json(folder / "config.json", "model config") if (folder / "config.json").is_file() else {}
    by_id = {i: s for s, i in added.items()}
    out = {}
    for name, role in ROLE_KEYS.items():
        token = tcfg.get(f"{role}_token") if isinstance(tcfg, dict) else None
        if isinstance(token, dict):  # an AddedToken written out as an object
            token = token.get("content")
        if token is None and isinstance(mcfg, dict):
            ident = mcfg.get(f"{role}_token_id")
            ident = ident[0] if isinstance(ident, list) and ident else ident
            token = by_id.get(ident) if isinstance(ident, int) else None
        if isinstance(token, str) and token in added:
            out[name] = token
    return out


def _split_pattern(pre: Any, where: str) -> str:
    """The split regex of a byte-level pre-tokenizer, or a refusal naming the field."""
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        if pre.get("add_prefix_space"):
            raise LmforgeError(f"{where}: field 'pre_tokenizer.add_prefix_space' is true; lmforge adds no space")
        return GPT2_PATTERN
    parts = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else None
    if not (isinstance(parts, list) and len(parts) == 2 and parts[0].get("type") == "Split"
            and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)
            and not parts[1].get("add_prefix_space")):
        raise LmforgeError(f"{where}: field 'pre_tokenizer' must be ByteLevel, or Split(regex) then ByteLevel "
                           f"without a regex (got {str(pre)[:120]})")
    split = parts[0]
    regex = (split.get("pattern") or {}).get("Regex")
    if not isinstance(regex, str) or split.get("behavior") != "Isolated" or split.get("invert"):
        raise LmforgeError(f"{where}: field 'pre_tokenizer' splits otherwise than on an isolated regex "
                           f"(got {str(split)[:120]})")
    return regex


def _is_nfc(normalizer: Any, where: str) -> bool:
    """Whether the tokenizer NFC-normalises text (else it does nothing to it), or a refusal naming the field."""
    if normalizer is None or normalizer == NORMALIZER:
        return False
    if isinstance(normalizer, dict) and normalizer.get("type") == "NFC":
        return True
    raise LmforgeError(f"{where}: field 'normalizer' of type {normalizer.get('type') if isinstance(normalizer, dict) else normalizer!r} "
                       "is not supported (none, NFC or lmforge's own)")


def _merge_pairs(model: dict[str, Any], where: str) -> list[tuple[str, str]]:
    pairs = []
    for k, m in enumerate(model.get("merges") or []):
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise LmforgeError(f"{where}: field 'model.merges' entry {k} is not a pair of tokens: {m!r}")
        pairs.append((pair[0], pair[1]))
    return pairs


def _ordinary_tokens(model: dict[str, Any], added_ids: set[int], where: str) -> tuple[list[tuple[int, int, int]], dict[int, int]]:
    """lmforge merges and the Hugging Face id -> lmforge id map of the ordinary (non-added) tokens."""
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise LmforgeError(f"{where}: field 'model' must be a byte-level BPE without byte_fallback "
                           f"(got type {model.get('type')!r})")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise LmforgeError(f"{where}: field 'model.vocab' is missing")
    char_byte = {byte_to_char(b): b for b in range(256)}

    def to_bytes(token: str) -> bytes:
        try:
            return bytes(char_byte[c] for c in token)
        except KeyError:
            raise LmforgeError(f"{where}: token {token!r} in 'model.vocab' is not byte-level (a character outside "
                               "GPT-2's byte map)") from None

    ids_of_bytes = {bytes([b]): b for b in range(256)}
    merges: list[tuple[int, int, int]] = []
    for left, right in _merge_pairs(model, where):
        a, b = ids_of_bytes.get(to_bytes(left)), ids_of_bytes.get(to_bytes(right))
        if a is None or b is None:
            raise LmforgeError(f"{where}: merge {left!r} {right!r} in 'model.merges' uses a token no earlier merge made")
        data = to_bytes(left + right)
        new = ids_of_bytes.setdefault(data, len(ids_of_bytes))
        merges.append((a, b, new))
    mapping = {}
    for token, hf_id in vocab.items():
        if hf_id in added_ids:
            continue
        lm_id = ids_of_bytes.get(to_bytes(token))
        if lm_id is None:
            raise LmforgeError(f"{where}: token {token!r} (id {hf_id}) in 'model.vocab' is neither a byte nor made "
                               "by a merge, so no encoding reaches it")
        mapping[int(hf_id)] = lm_id
    reached = set(mapping.values())
    missing = [b for b in range(256) if b not in reached]
    if missing:
        raise LmforgeError(f"{where}: field 'model.vocab' lacks byte(s) {missing[:5]}: not a byte-level vocabulary")
    return merges, mapping


def import_tokenizer(folder: str | Path) -> TokenizerImport:
    """Convert `folder/tokenizer.json` (see the module docstring); refuses with the file and field named."""
    folder = Path(folder)
    path = folder / "tokenizer.json"
    where = str(path)
    if not path.is_file():
        raise LmforgeError(f"{path} is missing (the import needs the Hugging Face tokenizer.json)")
    spec = read_json(path, "tokenizer")
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise LmforgeError(f"{where}: field 'model' is missing")
    nfc = _is_nfc(spec.get("normalizer"), where)
    notes = ["the tokenizer NFC-normalised text; lmforge does not, so text not in NFC may encode differently "
             "(most text is NFC)"] if nfc else []
    pattern = _split_pattern(spec.get("pre_tokenizer"), where)
    added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or []
             if isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int)}
    merges, mapping = _ordinary_tokens(spec["model"], set(added.values()), where)
    try:
        tok = Tokenizer(merges, pattern)
    except ValueError as e:
        raise LmforgeError(f"{where}: field 'model.merges' does not form a BPE vocabulary: {e}") from e
    specials = _special_names(folder, added)
    for name, token in specials.items():
        mapping[added[token]] = tok.special_tokens[name]
    dropped = sorted(set(added) - set(specials.values()))
    result = TokenizerImport(tok, mapping, [n for n in SPECIAL_TOKENS if n not in specials], dropped, notes)
    _check_same_ids(path, result, nfc)
    return result


def _check_same_ids(path: Path, result: TokenizerImport, nfc: bool) -> None:
    """Refuse a conversion that encodes any probe text to other ids than `tokenizers` does (probes in NFC when
    the folder's tokenizer normalises to it: the difference on other text is the one the import reports)."""
    import unicodedata

    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(path))
    for probe in PROBES:
        probe = unicodedata.normalize("NFC", probe) if nfc else probe
        # add_special_tokens=False: a bos the folder's post-processor adds is not part of the text's encoding
        theirs = [result.lmforge_ids.get(i, -1) for i in hf.encode(probe, add_special_tokens=False).ids]
        ours = result.tokenizer.encode(probe)
        if theirs != ours:
            raise LmforgeError(f"{path}: the converted tokenizer encodes {probe[:40]!r}... to other ids than "
                               "Hugging Face's (its merge order differs from lmforge's lowest-id-first rule); "
                               "nothing written")
