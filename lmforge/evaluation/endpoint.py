"""Measures through an OpenAI-compatible server (`--endpoint URL`): lmforge's own, vLLM's, any that echoes.

Both measures need each prompt token's log-prob, which `/v1/completions` returns with `echo: true, max_tokens: 0,
logprobs: 1` (vLLM and the legacy OpenAI API; `lmforge serve` computes them with the model's full forward). The
server's tokenizer decides the tokens, so nothing here knows it:
  multiple choice - one request per item: the context alone and the context followed by each option. An option's
    tokens are those after the longest run of tokens its echo shares with the context's echo, so when the context
    ends on a token boundary (as " Paris" after "Answer:") they are exactly the tokens `eval mc --checkpoint`
    scores, and the numbers agree. The context's trailing spaces move onto the option, as there.
  bits per byte - each document cut at whitespace into pieces of at most `chunk_chars` characters, each piece one
    prompt (the server adds its beginning-of-text token); bits = -sum of log-probs / ln 2 over the piece's bytes.
    Pieces are cut in characters, not tokens, so every tokenizer is scored with the same text as context. The
    default, the context in tokens less one, always fits ASCII text (a token holds at least one byte); text of
    many-byte characters may need a smaller --chunk-chars (the refusal says so).
    A server that adds no beginning-of-text token leaves the first token unscored: its bytes are left out too.
Requests run `parallel` at a time, each with a timeout; the host must be a loopback address unless allowed.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import check_fields, require
from lmforge.utils import LmforgeError


@dataclass
class EndpointConfig:
    """Where the server is and how hard to use it (`--endpoint` and the flags beside it)."""

    endpoint: str = ""  # base URL of the server, e.g. http://127.0.0.1:8000 (/v1 is added when missing)
    api_key: str | None = None  # sent as 'Authorization: Bearer KEY'
    model: str | None = None  # the served model's name (default: the first of GET /v1/models)
    allow_remote: bool = False  # allow a host that is not a loopback address
    parallel: int = 4  # requests in flight at once
    timeout: float = 120.0  # seconds one request may take
    # bits per byte: characters of one scored piece of a document (default: the model's context in tokens less one)
    chunk_chars: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, "parallel", 1 <= self.parallel <= 64, "must be from 1 to 64")
        require(self, "timeout", 0 < self.timeout <= 3600, "must be in (0, 3600] seconds")
        require(self, "chunk_chars", self.chunk_chars is None or self.chunk_chars >= 16, "must be at least 16")
        url = urllib.parse.urlsplit(self.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise LmforgeError(f"--endpoint {self.endpoint!r} must be an http:// or https:// URL with a host")
        try:
            url.port
        except ValueError as e:
            raise LmforgeError(f"--endpoint {self.endpoint!r}: {e}") from None
        if not self.allow_remote and not is_loopback(url.hostname):
            raise LmforgeError(f"--endpoint host {url.hostname!r} is not a loopback address; pass --allow-remote "
                               "to send the evaluation's text to another machine")

    @property
    def headers(self) -> dict[str, str]:
        auth = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {"Content-Type": "application/json", **auth}

    @property
    def base(self) -> str:
        root = self.endpoint.rstrip("/")
        return root if root.endswith("/v1") else root + "/v1"


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (a name is resolved; one that does not resolve is not)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


class Endpoint:
    """A client of one server's completions API, for prompt log-probs."""

    def __init__(self, cfg: EndpointConfig) -> None:
        self.cfg = cfg
        self.model, self.context = self._find_model()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.cfg.base + path, data=data, method=method, headers=self.cfg.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            if e.code in (401, 403):
                raise LmforgeError(f"--api-key: {self.cfg.base}{path} refused the request ({e.code}: {detail})") \
                    from None
            raise EndpointRefused(e.code, f"{self.cfg.base}{path} answered {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise LmforgeError(f"--endpoint {self.cfg.base}{path}: {reason}") from None

    def _find_model(self) -> tuple[str, int | None]:
        """--model (default: the first listed) and its context in tokens where the list says (`max_model_len`,
        as lmforge's and vLLM's servers do)."""
        models = [m for m in self._call("GET", "/models").get("data") or [] if isinstance(m, dict) and "id" in m]
        if not models and self.cfg.model is None:
            raise LmforgeError(f"--endpoint {self.cfg.base}/models lists no model; name one with --model")
        name = self.cfg.model or str(models[0]["id"])
        listed = next((m for m in models if m["id"] == name), {})
        context = listed.get("max_model_len")
        return name, context if isinstance(context, int) and not isinstance(context, bool) and context > 0 else None

    def echo(self, prompts: list[str]) -> list[tuple[list[str], list[float | None]]]:
        """(tokens, log-probs) of each prompt as the server cut it; the first log-prob is None (nothing predicts
        the first token)."""
        body = {"model": self.model, "prompt": prompts, "echo": True, "max_tokens": 0, "logprobs": 1,
                "temperature": 0}
        try:
            answer = self._call("POST", "/completions", body)
        except EndpointRefused as e:
            raise LmforgeError(f"--endpoint: the server refused an echo request (prompt log-probs), which "
                               f"this measure needs: {e}") from None
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        out = []
        for prompt, choice in zip(prompts, choices):
            lp = choice.get("logprobs") or {}
            tokens, logprobs = lp.get("tokens"), lp.get("token_logprobs")
            if not tokens or not logprobs or len(tokens) != len(logprobs) or not choice.get("text", "").startswith(
                    prompt):
                raise LmforgeError(f"--endpoint {self.cfg.base}: the server does not echo the prompt's tokens and "
                                   "log-probs (echo: true, max_tokens: 0, logprobs: 1), which this measure needs")
            out.append((list(tokens), list(logprobs)))
        if len(out) != len(prompts):
            raise LmforgeError(f"--endpoint {self.cfg.base}: {len(prompts)} prompts sent, {len(out)} answered")
        return out

    def map(self, batches: list[list[str]]) -> list[list[tuple[list[str], list[float | None]]]]:
        """`echo` over many batches of prompts, `parallel` requests at a time, answers in order."""
        with ThreadPoolExecutor(max_workers=self.cfg.parallel) as pool:
            return list(pool.map(self.echo, batches))


class EndpointRefused(LmforgeError):
    """The server answered with an HTTP error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _scored(logprobs: list[float | None], start: int) -> float:
    values = logprobs[max(start, 1):]
    if any(v is None for v in values):
        raise LmforgeError("--endpoint: the server left a prompt token without a log-prob")
    return float(sum(values))


def option_scores(context: tuple[list[str], list[float | None]],
                  options: list[tuple[list[str], list[float | None]]]) -> list[tuple[float, int]]:
    """(summed log-prob, tokens) of each option: the tokens after the prefix its echo shares with the context's."""
    ctx_tokens = context[0]
    out = []
    for tokens, logprobs in options:
        shared = 0
        while shared < min(len(ctx_tokens), len(tokens)) and ctx_tokens[shared] == tokens[shared]:
            shared += 1
        start = max(shared, 1)
        if start >= len(tokens):
            raise LmforgeError("--endpoint: an option adds no token to its context")
        out.append((_scored(logprobs, start), len(tokens) - start))
    return out


def evaluate_items_endpoint(endpoint: Endpoint, items: list[Any]) -> list[dict[str, Any]]:
    """`multiple_choice.evaluate_items` through the server: the same per-item result rows."""
    from lmforge.evaluation.multiple_choice import item_result

    batches = []
    for item in items:
        stripped = item.context.rstrip(" ")
        moved = item.context[len(stripped):]
        batches.append([stripped] + [stripped + moved + option for option in item.choices])
    answers = endpoint.map(batches)
    results = []
    for item, answer in zip(items, answers):
        scored = option_scores(answer[0], answer[1:])
        results.append(item_result(item, [total for total, _ in scored], [count for _, count in scored]))
    return results


def pieces(text: str, chunk_chars: int) -> list[str]:
    """`text` cut before whitespace into pieces of at most `chunk_chars` characters (hard cuts only where a piece
    holds no whitespace)."""
    out = []
    while len(text) > chunk_chars:
        cut = max(text.rfind(" ", 1, chunk_chars), text.rfind("\n", 1, chunk_chars))
        cut = cut if cut > 0 else chunk_chars
        out.append(text[:cut])
        text = text[cut:]
    return out + ([text] if text else [])


def read_documents(path: Path) -> list[str]:
    """Held-out text: a JSONL file of {"text": ...} records (one document each), or any other file as one."""
    if path.suffix == ".jsonl":
        docs = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                        docs.append(str(record["text"]))
                    except (ValueError, KeyError, TypeError) as e:
                        raise LmforgeError(f"--text {path} line {lineno}: not a {{\"text\": ...}} record "
                                           f"({e!r})") from None
    else:
        docs = [path.read_text(encoding="utf-8")]
    docs = [d for d in docs if d]
    if not docs:
        raise LmforgeError(f"--text {path} holds no text")
    return docs


def text_bits_per_byte(echo: Any, documents: list[str], chunk_chars: int, batch: int = 8) -> dict[str, Any]:
    """Bits per byte of `documents` under a scorer `echo(list of prompts) -> [(tokens, log-probs)]` (an
    `Endpoint.map`, or a local model's `local_echo`), each piece one prompt."""
    texts = [p for d in documents for p in pieces(d, chunk_chars)]
    batches = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    nats, nbytes, ntokens = 0.0, 0, 0
    for group, answers in zip(batches, echo(batches)):
        for text, (tokens, logprobs) in zip(group, answers):
            first_is_text = text.startswith(tokens[0]) and tokens[0] != ""
            nats -= _scored(logprobs, 1)
            nbytes += len(text.encode("utf-8")) - (len(tokens[0].encode("utf-8")) if first_is_text else 0)
            ntokens += len(tokens) - 1
    if nbytes <= 0 or ntokens <= 0:
        raise LmforgeError("no scored text: the documents are too short")
    return {"documents": len(documents), "pieces": len(texts), "chunk_chars": chunk_chars, "tokens": ntokens,
            "bytes": nbytes, "val_loss": nats / ntokens, "val_bpb": nats / math.log(2) / nbytes}
