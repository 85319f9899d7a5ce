"""`lmforge serve`: a checkpoint behind an OpenAI-compatible HTTP API with continuous batching, and its pages.

    lmforge serve --checkpoint runs/sft [--device cuda] [--host 0.0.0.0] [--port 8000] [--api-key KEY]
    lmforge serve --params model.bin ...      (a file from `lmforge export params`, fp32 or int8)

Then any OpenAI client works against it (`OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)`), and the
pages (chat, tokenizer explorer, next-token view) are at http://127.0.0.1:8000/pages/. It binds 127.0.0.1 unless
`--host` says otherwise; with `--api-key` (or the environment variable LMFORGE_API_KEY, which keeps the key out of
the process list) every API route wants `Authorization: Bearer KEY`. A parameter file's tokenizer is rebuilt from its
token table (`loading.py`); its int8 weights are served as the fp32 values they stand for.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import add_config_arguments, check_fields, config_from_args, require


@dataclass
class ServeConfig:
    checkpoint: str = ""  # run folder (its newest checkpoint) or checkpoint folder to serve
    params: str = ""  # or a parameter file from `lmforge export params` (fp32, fp16/bf16 or int8)
    host: str = "127.0.0.1"  # address to bind; 0.0.0.0 exposes the server to the network
    port: int = 8000  # TCP port (0 picks a free one)
    api_key: str | None = None  # require 'Authorization: Bearer KEY' (default: $LMFORGE_API_KEY, else none)
    model_name: str | None = None  # the model id clients send (default: the checkpoint folder's name)
    device: str = "auto"  # auto (CUDA when visible, else cpu), cpu, cuda, cuda:N or mps
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # weights (default bf16 on CUDA, fp32 on CPU)
    slots: int = 16  # KV cache rows: samples decoding at once (each holds the model's whole context)
    prefix_cache: int = 8  # shared prompt prefixes (system prompts) whose keys/values are kept
    max_concurrent: int = 64  # prompts in flight (queued or running) before new requests get 429
    max_body_bytes: int = 1 << 20  # largest request body
    max_tokens: int = 4096  # largest max_tokens a request may ask for (the context bounds it too)
    max_n: int = 8  # most samples per request (at most --slots)
    threads: int | None = None  # torch threads (default: all cores)
    compile: bool = False  # compile the decode step per batch bucket at start-up; each bucket keeps the faster step

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, "checkpoint", bool(self.checkpoint) != bool(self.params),
                "or --params is required, not both: a run or checkpoint folder, or a parameter file")
        require(self, "port", 0 <= self.port <= 65535, "must be from 0 to 65535")
        require(self, "api_key", self.api_key is None or len(self.api_key) >= 8, "must have at least 8 characters")
        for name in ("slots", "max_concurrent", "max_body_bytes", "max_tokens", "max_n"):
            require(self, name, getattr(self, name) >= 1, "must be at least 1")
        require(self, "slots", self.slots <= 4096, "must be at most 4096")
        require(self, "prefix_cache", self.prefix_cache >= 0, "must be 0 or more")
        require(self, "max_n", self.max_n <= self.slots, f"must be at most --slots ({self.slots})")
        require(self, "threads", self.threads is None or self.threads >= 1, "must be at least 1")


def start_service(cfg: ServeConfig, device: str, tools_cfg: Any = None) -> tuple[Any, Any, str]:
    """(scheduler, app, model name) of `cfg`: the engine loaded, the scheduler warmed up and running, the app over it
    (with the server-side tools of `tools_cfg`, a `ServerToolsConfig`, when given). `lmforge serve` runs the app under
    uvicorn; the speedrun's serve stage on a background server."""
    from lmforge.serve.app import create_app
    from lmforge.serve.loading import load_served_engine
    from lmforge.serve.protocol import Limits
    from lmforge.serve.scheduler import Scheduler

    engine, default_name = load_served_engine(cfg.checkpoint, cfg.params, device, cfg.dtype)
    name = cfg.model_name or default_name
    scheduler = Scheduler(engine, slots=cfg.slots, prefix_entries=cfg.prefix_cache, max_requests=cfg.max_concurrent,
                          compile="inductor" if cfg.compile else None)
    print(f"lmforge serve: warming up {name} on {device} ...", flush=True)
    scheduler.warm_up()
    scheduler.start()
    limits = Limits(max_body_bytes=cfg.max_body_bytes, max_tokens=cfg.max_tokens, max_n=cfg.max_n)
    tools = tools_cfg.build() if tools_cfg is not None else None
    app = create_app(scheduler, name, limits, cfg.api_key or os.environ.get("LMFORGE_API_KEY") or None,
                     server_tools=tools, spotlight=bool(tools_cfg and tools_cfg.spotlight))
    return scheduler, app, name


def cmd_serve(args: argparse.Namespace) -> int:
    from lmforge.serve.tool_loop import ServerToolsConfig
    from lmforge.utils import configure_threads, resolve_device

    cfg = config_from_args(ServeConfig, args)
    tools_cfg = config_from_args(ServerToolsConfig, args)
    device = resolve_device(cfg.device)
    configure_threads(cfg.threads)
    import uvicorn

    scheduler, app, name = start_service(cfg, device, tools_cfg)
    print(f"lmforge serve: {name} at http://{cfg.host}:{cfg.port}/v1 (pages: http://{cfg.host}:{cfg.port}/pages/)",
          flush=True)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    finally:
        scheduler.stop()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a checkpoint or parameter file: OpenAI-compatible API, continuous batching, web pages",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, ServeConfig)
    from lmforge.serve.tool_loop import ServerToolsConfig

    add_config_arguments(p, ServerToolsConfig, title="server-side tools (the server runs the model's tool calls)")
    p.set_defaults(func=cmd_serve)
