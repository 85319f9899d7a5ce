"""The labeling server: one static page (`page.html`, plain HTML and JS, no build step) and a small JSON API over a
`LabelStore`.

    GET  /                 the page
    POST /api/next         {"annotator"} -> {"item": {...}, "progress"} or {"item": null, "progress"} when done
    POST /api/judgement    {"annotator", "item", "shown", "choice", "reason"?, "ranking"?} -> {"ok", "id", "progress"}

A judgement is answered 200 only after its transaction committed (WAL, synchronous=FULL), so whatever the page was
told is saved survives a `kill -9` of the server. Anything malformed gets a 4xx JSON `{"error": ...}` and changes
nothing: 400 bad JSON, wrong types or values, 404 an unknown item, 409 an item not assigned to this annotator,
413 a body over `MAX_BODY_BYTES`.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from lmforge.posttrain.label_store import LabelStore, NotAssigned, UnknownItem
from lmforge.utils import LmforgeError

PAGE = Path(__file__).with_name("page.html")
MAX_BODY_BYTES = 16_384


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request) -> dict[str, Any] | JSONResponse:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "request body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    return body


def create_app(store: LabelStore) -> FastAPI:
    """The app over one store (the store's lock serialises the requests' database work)."""
    app = FastAPI(title="lmforge labeling", docs_url=None, redoc_url=None, openapi_url=None)
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.post("/api/next")
    async def next_item(request: Request) -> Any:
        body = await _body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            item = await run_in_threadpool(store.next_item, body.get("annotator"))
            progress = await run_in_threadpool(store.progress, body["annotator"].strip())
        except LmforgeError as e:
            return _error(400, str(e))
        return {"item": item, "progress": progress}

    @app.post("/api/judgement")
    async def judgement(request: Request) -> Any:
        body = await _body(request)
        if isinstance(body, JSONResponse):
            return body
        unknown = set(body) - {"annotator", "item", "shown", "choice", "reason", "ranking"}
        if unknown:
            return _error(400, f"unknown field(s) {sorted(unknown)}")
        try:
            jid = await run_in_threadpool(store.record, body.get("annotator"), body.get("item"), body.get("shown"),
                                          body.get("choice"), body.get("reason", ""), body.get("ranking"))
            progress = await run_in_threadpool(store.progress, body["annotator"].strip())
        except UnknownItem as e:
            return _error(404, str(e))
        except NotAssigned as e:
            return _error(409, str(e))
        except LmforgeError as e:
            return _error(400, str(e))
        return {"ok": True, "id": jid, "progress": progress}

    return app


def check_port(port: int) -> None:
    """Refuse a port out of range or in use in one line naming it (not uvicorn's log and exit 1), before the
    store is opened."""
    if not 1 <= port <= 65535:
        raise LmforgeError(f"--port must be in 1..65535 (got {port})")
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as e:
            raise LmforgeError(f"--port {port} cannot be used on 127.0.0.1: {e.strerror}") from e


def serve(store: LabelStore, port: int, annotator: str | None = None) -> None:
    """Serve the page on 127.0.0.1:port until interrupted (only this machine can reach it). Each browser names
    its annotator; `annotator` only pre-fills the name through the link printed."""
    import urllib.parse

    import uvicorn

    query = f"?annotator={urllib.parse.quote(annotator)}" if annotator else ""
    print(f"labeling page on http://127.0.0.1:{port}/{query} (Ctrl-C to stop)", flush=True)
    uvicorn.run(create_app(store), host="127.0.0.1", port=port, log_level="warning")
