"""Byte-level BPE tokenizer: our trainer, tiktoken-backed encoding, the fixed special tokens (see tokenizer.py); and
the token shards made with it for pretraining (`shards.py`: the format; `encode_corpus.py`: `lmforge tokenize`)."""

from lmforge.tokenizer.tokenizer import SPECIAL_TOKENS, StreamDecoder, Tokenizer

__all__ = ["Tokenizer", "StreamDecoder", "SPECIAL_TOKENS"]
