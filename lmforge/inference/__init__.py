"""Inference: the engine (`engine.py`: KV-cache sessions, batching, streaming, stops), sampling (`sampling.py`),
the chat with tools built on the engine's sessions (`chat.py`, `tools.py`), and the `lmforge generate` and
`lmforge chat` verbs (`cli.py`). Import from the submodules; this package imports nothing heavy, so
`lmforge --help` stays instant."""
