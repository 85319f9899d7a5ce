"""Evaluation: validation loss and bits per byte (`bpb`), comparable across tokenizers."""
