"""Byte-level BPE tokenizer: our trainer, tiktoken-backed encoding, the fixed special tokens (see tokenizer.py)."""

from lmforge.tokenizer.tokenizer import SPECIAL_TOKENS, StreamDecoder, Tokenizer

__all__ = ["Tokenizer", "StreamDecoder", "SPECIAL_TOKENS"]
