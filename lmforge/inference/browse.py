"""The browse tool: fetch one web page from an allowed host and hand its main text to the model.

`browse(url)` is the "LLM OS" reading the web, and the channel indirect prompt injection attacks (a page can say
anything), so every step is bounded and every failure is a sentence for the model, never an exception:

- only `http`/`https` URLs, and only hosts on the allow list (default: this machine, where the speedrun serves the
  standard library's documentation with pydoc); `--browse-allow HOST` adds one. Hosts are compared by name, so
  `localhost` and `127.0.0.1` are separate entries (both are in the default);
- redirects are followed by hand, at most `max_redirects`, each target checked against the same rules as the
  first URL (an allowed page cannot bounce the tool to another host or to `file://`);
- the data pipeline's `Fetcher` does the GET: a socket timeout on each read, a deadline on the whole page (a server
  that drips bytes), and a size cap checked against Content-Length and again while reading;
- only HTML is read (a binary or other type is refused before its body is downloaded); the text is extracted with
  the pipeline's own `Extract` step (the same extractor that made the training corpus) and cut to `max_chars`.

What comes back is plain text. The chat loop encodes it like any tool output, with special tokens not allowed, so
a page full of `<|end|>` strings stays ordinary text (tests/test_security_injection.py).
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from lmforge.utils import LmforgeError

DEFAULT_ALLOWED_HOSTS = ("127.0.0.1", "localhost", "::1")
USER_AGENT = "lmforge-browse/1.0"


class BrowseError(ValueError):
    """A page the tool refuses or cannot read; its message is what the model reads after "error: "."""


@dataclass(frozen=True)
class BrowseLimits:
    """Bounds of one browse call (the chat, eval and serve verbs use these defaults)."""

    timeout_s: float = 5.0  # each socket read; the whole page gets 4x this (the fetcher's deadline)
    max_bytes: int = 2_000_000  # largest HTML body read
    max_redirects: int = 3
    max_chars: int = 2000  # of extracted text handed to the model
    extractor: str = "resiliparse"  # the data pipeline's Extract mode (resiliparse keeps code and lists intact)

    def __post_init__(self) -> None:
        if not (0 < self.timeout_s <= 120 and 1 <= self.max_bytes <= 1 << 30 and 0 <= self.max_redirects <= 20
                and self.max_chars >= 1):
            raise LmforgeError(f"browse limits out of range: {self}")


def normalize_host(host: str) -> str:
    """A host as the allow list compares it: lower case, no brackets, no trailing dot; refused if empty or with a
    scheme, path or port (the list holds hosts, any port of an allowed host is allowed)."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name or any(c in name for c in "/@?#") or " " in name or (name.count(":") == 1):
        raise LmforgeError(f"--browse-allow {host!r}: give a host name or address, without scheme, port or path")
    return name


@dataclass(frozen=True)
class Browser:
    """The browse tool's state: which hosts it may read and its limits. Call it with a URL (the tool's argument)."""

    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    limits: BrowseLimits = field(default_factory=BrowseLimits)

    @classmethod
    def allowing(cls, extra_hosts: list[str] | None = None, limits: BrowseLimits | None = None) -> "Browser":
        """The default allow list plus `extra_hosts` (the `--browse-allow` flags), each checked."""
        hosts = DEFAULT_ALLOWED_HOSTS + tuple(normalize_host(h) for h in extra_hosts or [])
        return cls(tuple(dict.fromkeys(hosts)), limits or BrowseLimits())

    def check_url(self, url: str) -> str:
        """The URL if the tool may fetch it; BrowseError naming the reason otherwise."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").rstrip(".")
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as e:
            raise BrowseError(f"not a valid URL: {url[:200]!r} ({e})") from None
        if parts.scheme not in ("http", "https"):
            raise BrowseError(f"only http:// and https:// URLs can be browsed, not {parts.scheme or 'a bare path'}:")
        if not host:
            raise BrowseError(f"the URL has no host: {url[:200]!r}")
        if "@" in parts.netloc:  # the connection would be made to the whole netloc, not to the host checked here
            raise BrowseError("URLs with a user name or password are not browsed")
        if host not in self.allowed_hosts:
            raise BrowseError(f"host {host!r} is not on the browse allow list ({', '.join(self.allowed_hosts)})")
        return url

    def fetch_html(self, url: str) -> tuple[str, str]:
        """(final URL, HTML text) of `url`, following redirects within the allow list."""
        from lmforge.data.charset import decode_html
        from lmforge.data.fetch import Fetcher, TooLarge
        from lmforge.data.warc import HTML_TYPES

        lim = self.limits
        fetcher = Fetcher(USER_AGENT, timeout=lim.timeout_s, max_bytes=lim.max_bytes)
        try:
            for _ in range(lim.max_redirects + 1):
                self.check_url(url)
                try:
                    page = fetcher.get(url, accept_html_only=True)
                except TooLarge:
                    raise BrowseError(f"the page is larger than {lim.max_bytes} bytes") from None
                except TimeoutError:
                    raise BrowseError(f"the page did not arrive within {lim.timeout_s:g} s") from None
                except (OSError, http.client.HTTPException) as e:
                    raise BrowseError(f"could not fetch the page: {type(e).__name__}: {e}") from None
                if 300 <= page.status < 400 and page.header("location"):
                    url = urljoin(url, page.header("location"))
                    continue
                if page.status != 200:
                    raise BrowseError(f"the server answered HTTP {page.status} {page.reason}")
                ctype = page.header("content-type").split(";", 1)[0].strip().lower()
                if ctype not in HTML_TYPES:
                    raise BrowseError(f"not an HTML page (content-type {ctype or 'missing'})")
                html, _ = decode_html(page.body, page.header("content-type"))
                if html is None:
                    raise BrowseError("the page is binary, not text")
                return url, html
            raise BrowseError(f"more than {lim.max_redirects} redirects")
        finally:
            fetcher.close()

    def __call__(self, argument: str) -> str:
        url = argument.strip()
        final, html = self.fetch_html(url)
        text = extract_text(html, self.limits.extractor)
        if not text:
            raise BrowseError("the page has no readable text")
        if len(text) > self.limits.max_chars:
            text = text[:self.limits.max_chars] + " [cut]"
        return text if final == url else f"(redirected to {final})\n{text}"


def extract_text(html: str, mode: str = "resiliparse") -> str:
    """Main text of an HTML page with the data pipeline's `Extract` step, configured as for the default corpus
    (pydoc's banner, search forms and file path left out: on the default site they would fill the model's share
    of a tool output); "" when it finds none."""
    from lmforge.data.document import Document
    from lmforge.data.filters.configs import PYDOC_SKIP_ELEMENTS
    from lmforge.data.filters.extract import Extract

    doc = Document(html, "browse")
    skip = list(PYDOC_SKIP_ELEMENTS) if mode == "resiliparse" else []
    reason = Extract(mode=mode, skip_elements=skip, timeout_s=10.0).keep(doc)
    if reason == "extract_timeout":
        raise BrowseError("extracting the page's text took too long")
    return "" if reason is not None else doc.text
