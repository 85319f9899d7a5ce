"""The FastAPI application (`create_app`) and a uvicorn server on a background thread (`BackgroundServer`).

See `api.py` for the request flow; this module wires routes, authentication, limits and error rendering.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from lmforge.serve.api import STATIC, Call, Shape, call_tokens, check_key, collect, read_body, stream_events
from lmforge.serve.echo import PromptScorer, echoed
from lmforge.serve.protocol import ApiError, Limits, chat_spec, check_model, completion_spec, token_piece
from lmforge.serve.scheduler import Scheduler
from lmforge.serve.tool_loop import ServerTools, ToolLoopCall

log = logging.getLogger("lmforge.serve")


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Any, e: ApiError) -> Any:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, e: HTTPException) -> Any:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        body = ApiError(e.status_code, str(e.detail), code=kind, kind=kind).body()
        return JSONResponse(body, status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Any, e: RequestValidationError) -> Any:
        return JSONResponse(ApiError(400, str(e.errors())[:500]).body(), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Any, e: Exception) -> Any:
        log.exception("unexpected error in %s", request.url.path)
        body = ApiError(500, f"internal error: {type(e).__name__}", code="internal_error", kind="server_error").body()
        return JSONResponse(body, status_code=500)


def _utility_routes(app: FastAPI, scheduler: Scheduler, model_name: str, limits: Limits, checked: Any,
                    api_key: str | None) -> None:
    """The routes around generation: the model list, tokenizer, health and metrics."""
    tok, block = scheduler.engine.tokenizer, scheduler.model.config.block_size
    started = int(time.time())

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        check_key(request.headers.get("authorization"), api_key)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started,
                                            "owned_by": "lmforge", "max_model_len": block}]}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Any:
        body = await checked(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise ApiError(400, "content must be a string", param="content", code="invalid_type")
        if len(content) > limits.max_body_bytes:
            raise ApiError(400, "content is too long", param="content")
        ids = ([tok.bos_id] if body.get("add_special") is True else []) + tok.encode(content)
        if body.get("with_pieces") is True:
            return {"tokens": [token_piece(tok, t) for t in ids]}
        return {"tokens": ids}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Any:
        body = await checked(request)
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ApiError(400, "tokens must be a list of token ids", param="tokens", code="invalid_type")
        if any(not 0 <= t < tok.vocab_size for t in ids):
            raise ApiError(400, f"token ids must be from 0 to {tok.vocab_size - 1}", param="tokens")
        answer: dict[str, Any] = {"content": tok.decode(ids)}
        if body.get("with_pieces") is True:
            answer["pieces"] = [token_piece(tok, t) for t in ids]
        return answer

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "model": model_name, "slots": scheduler.pool.slots,
                "slots_running": scheduler.metrics.running_slots}

    @app.get("/metrics")
    async def metrics(request: Request) -> Any:
        check_key(request.headers.get("authorization"), api_key)
        return PlainTextResponse(scheduler.metrics.render(), media_type="text/plain; version=0.0.4")


def create_app(scheduler: Scheduler, model_name: str, limits: Limits | None = None,
               api_key: str | None = None, server_tools: ServerTools | None = None,
               spotlight: bool = False) -> FastAPI:
    """The server's application over a started scheduler. `server_tools`: the server runs the model's tool calls
    in chat answers (`tool_loop.py`); `spotlight`: tool outputs are datamarked (`tools.spotlight_messages`)."""
    limits = limits or Limits()
    tok, block = scheduler.engine.tokenizer, scheduler.model.config.block_size
    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None, openapi_url=None)
    scorer = PromptScorer(scheduler.model)  # echo's prompt log-probs, on a worker thread
    _error_handlers(app)

    async def checked(request: Request) -> dict[str, Any]:
        check_key(request.headers.get("authorization"), api_key)
        return await read_body(request, limits.max_body_bytes)

    async def generate(request: Request, chat: bool) -> Any:
        body = await checked(request)
        check_model(body, model_name)
        if chat:
            spec = chat_spec(body, tok, limits, block, server_tools=server_tools is not None, spotlight=spotlight)
        else:
            spec = completion_spec(body, tok, limits, block)
        shape = Shape(chat, model_name, tok, spec.token_ids_as_text)
        got = None if spec.echo is None else await echoed(scorer, spec, tok, call_tokens(tok, spec))
        if not spec.generate:
            return JSONResponse(shape.whole(got))
        call = ToolLoopCall(scheduler, spec, server_tools, Call) if spec.server_tools else Call(scheduler, spec)
        if spec.stream:
            return StreamingResponse(stream_events(call, spec, shape), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        answer = await collect(call, spec, shape, request.is_disconnected, got)
        return JSONResponse(answer if answer is not None else {}, status_code=200 if answer is not None else 499)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await generate(request, chat=True)

    _utility_routes(app, scheduler, model_name, limits, checked, api_key)
    # The pages live under /pages/ (a mount at / would answer 404 instead of 405 for a wrong method on an API
    # route); / leads there.
    app.mount("/pages", StaticFiles(directory=STATIC, html=True), name="pages")

    @app.get("/")
    async def home() -> Any:
        return RedirectResponse("/pages/")
    return app


class BackgroundServer:
    """uvicorn serving an app on a daemon thread (tests, the speedrun, the benchmark); port 0 picks a free one."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, name="lmforge-http", daemon=True)
        self.host = host
        self.port = port

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
