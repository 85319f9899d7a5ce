"""Inference: the engine (`engine.py`: KV-cache sessions, batching, streaming, stops), sampling (`sampling.py`),
the `lmforge generate` verb (`cli.py`), the speedrun's sample stage (`stage.py`), and the chat with tools built
on the engine's sessions (`chat.py`, `tools.py`). Import from the submodules; this package imports nothing heavy,
so `lmforge --help` stays instant."""
