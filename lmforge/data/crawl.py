"""A breadth-first web crawler that writes gzipped WARC files and resumes from its saved frontier.

The shape follows the crawlers behind Common Crawl (Nutch, Heritrix, StormCrawler) scaled down to one process:
a frontier of normalised URLs and a seen-set, a scope (the seeds' hosts unless told otherwise), robots.txt and a
per-host delay between requests, a pool of fetcher threads (fetching is waiting on sockets, so threads are enough and
the standard library's `http.client` needs nothing installed), a cap on the size and the time of every page, and a
bound on redirect chains. Only HTML responses are archived, each as a request + response record pair (the WARC
form of Common Crawl, readable by warcio, FastWARC and `lmforge.data.readers`).

Determinism and resume: fetches run concurrently, but their results are processed in the order the URLs were taken
from the frontier, so on one host the pages found and their order do not depend on network timing (across hosts,
the per-host delays decide which host's URL goes next). Every
`checkpoint_pages` pages (or `checkpoint_seconds`) the current WARC file is closed (written under a hidden temporary name, renamed when
complete) and then the state (frontier, seen-set, counters, next file number) is saved atomically. A crawl that
dies loses only the temporary file of pages after the last checkpoint; on restart those pages are fetched again
and no page is archived twice. Ctrl-C (when the crawl runs in the main thread) stops between two pages, closes the
current file and saves the state, so nothing fetched is lost.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import http.client
import io
import os
import posixpath
import re
import signal
import socket
import ssl
import threading
import time
import urllib.robotparser
from dataclasses import asdict, dataclass, field
from html import unescape
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from lmforge.data.readers import HTML_TYPES, decode_html
from lmforge.utils import LmforgeError, human_bytes, read_json, write_json

USER_AGENT = "lmforge-crawler/0.1 (language-model training data; honours robots.txt)"
ROBOTS_AGENT = "lmforge-crawler"
STATE_FILE = "crawl_state.json"
STATS_FILE = "crawl_stats.json"


@dataclass
class CrawlConfig:
    """What to crawl and how politely. The defaults suit the open web; `lmforge crawl --pydoc` lowers the delay."""

    seeds: list[str] = field(default_factory=list)
    out: str = "crawl"
    max_pages: int = 1000  # HTML pages archived (the crawl stops there, resumable with a larger number)
    allowed_hosts: list[str] | None = None  # scope; None: the hosts of the seeds
    max_depth: int | None = None  # links followed from a seed; None: unbounded
    workers: int = 8  # concurrent fetches
    delay: float = 1.0  # seconds between two requests to one host (robots.txt Crawl-delay can raise it)
    timeout: float = 15.0  # seconds for connecting and for each read; a whole page may take 4x this
    max_page_bytes: int = 5 << 20  # larger pages are skipped ("too_large")
    max_redirects: int = 5
    respect_robots: bool = True
    user_agent: str = USER_AGENT
    warc_prefix: str = "crawl"
    warc_max_bytes: int = 1 << 30  # rotate a WARC file when it grows past this
    checkpoint_pages: int = 200  # close the WARC file and save the state this often...
    checkpoint_seconds: float = 300.0  # ...or this often, whichever comes first (a slow, polite crawl)
    progress: bool = True


# ---------------------------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")


def _normalise_escapes(part: str, safe: str) -> str:
    """Upper-case percent escapes, decode those of unreserved characters, escape bytes that must be escaped."""
    def fix(m: re.Match) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()
    return quote(_PCT.sub(fix, part), safe=safe + "%")


def _remove_dot_segments(path: str) -> str:
    if "." not in path:
        return path
    trailing = path.endswith(("/", "/.", "/.."))
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if trailing and not norm.endswith("/"):
        norm += "/"
    return norm


def normalize_url(url: str, base: str | None = None) -> str | None:
    """The canonical form of a link (resolved against `base`), or None if it is not an http(s) URL.

    Scheme and host lower-cased, default port dropped, dot-segments removed, escapes normalised, fragment dropped,
    an empty path made "/". The query keeps its order here (some servers care); `seen_key` sorts it for the seen-set.
    """
    url = url.strip()
    if base is not None:
        url = urljoin(base, url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    if not host.isascii():  # internationalised domain names travel as punycode
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _remove_dot_segments(_normalise_escapes(parts.path, "/:@!$&'()*+,;=")) or "/"
    query = _normalise_escapes(parts.query, "=&;:@!$'()*+,/?")
    return urlunsplit((scheme, netloc, path, query, ""))


def seen_key(url: str) -> str:
    """The seen-set key: the normalised URL with its query parameters sorted (same page, other parameter order)."""
    parts = urlsplit(url)
    if "&" not in parts.query:
        return url
    return urlunsplit(parts._replace(query="&".join(sorted(parts.query.split("&")))))


def url_host(url: str) -> str:
    return urlsplit(url).netloc


# Link extraction is the crawler's own main cost: html.parser took ~35 ms of CPU per pydoc page (it tokenises every
# tag); scanning only <a>, <area>, <base> and <meta> tags with two regular expressions does it in a fraction.
_LINK_TAG = re.compile(r"<(a|area|base|meta)\s([^>]*)>|<!--.*?-->", re.I | re.S)
_ATTR = re.compile(r"""([^\s=/"'<>]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""")


def extract_links(html: str, page_url: str) -> list[str]:
    """Normalised absolute http(s) links of a page (<a>/<area> without rel=nofollow), in order, without repeats.

    Relative links resolve against the first <base href>, else the page URL. Links inside comments are ignored. A
    page whose robots <meta> says "nofollow" (or "none") has no links to follow.
    """
    base = page_url
    found: dict[str, None] = {}
    seen_base = False
    for m in _LINK_TAG.finditer(html):
        tag = m.group(1)
        if tag is None:  # a comment
            continue
        attrs = {a.group(1).lower(): a.group(2) if a.group(2) is not None else
                 a.group(3) if a.group(3) is not None else a.group(4) for a in _ATTR.finditer(m.group(2))}
        if tag.lower() == "meta":
            if (attrs.get("name") or "").lower() in ("robots", ROBOTS_AGENT) and \
                    re.search(r"\b(nofollow|none)\b", (attrs.get("content") or "").lower()):
                return []
            continue
        href = attrs.get("href")
        if not href:
            continue
        href = unescape(href)
        if tag.lower() == "base":
            if not seen_base:
                base, seen_base = urljoin(page_url, href), True
            continue
        if "nofollow" in (attrs.get("rel") or "").lower():
            continue
        u = normalize_url(href, base)
        if u is not None:
            found.setdefault(u, None)
    return list(found)


# ---------------------------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Fetched:
    """One HTTP exchange, as archived: what was sent and what came back."""

    url: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    request_headers: list[tuple[str, str]]
    ip: str | None = None

    def header(self, name: str) -> str:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), "")


class _TooLarge(Exception):
    pass


class Fetcher:
    """GET with http.client over kept-alive connections (one per thread and host); no redirects followed here.

    Politeness is enforced here, at the moment of each request (robots.txt included): a request to a host waits
    until `delay` seconds (or the host's robots.txt Crawl-delay, if larger) after the previous one to that host.
    The crawler's scheduler spaces URLs the same way, so fetcher threads rarely wait; this is what makes the rule
    hold even when queued tasks start together.
    """

    def __init__(self, user_agent: str, timeout: float, max_bytes: int, delay: float = 0.0):
        self.user_agent = user_agent
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.delay = delay
        self.host_delay: dict[str, float] = {}  # robots.txt Crawl-delay per host
        self.local = threading.local()
        self.ssl_context = ssl.create_default_context()
        self.lock = threading.Lock()
        self.next_slot: dict[str, float] = {}
        self.conns: list[http.client.HTTPConnection] = []

    def delay_for(self, netloc: str) -> float:
        return max(self.delay, self.host_delay.get(netloc, 0.0))

    def _wait_turn(self, netloc: str) -> None:
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_slot.get(netloc, 0.0))
            self.next_slot[netloc] = slot + self.delay_for(netloc)
        if slot > now:
            time.sleep(slot - now)

    def _connection(self, scheme: str, netloc: str, fresh: bool) -> http.client.HTTPConnection:
        conns = self.local.__dict__.setdefault("conns", {})
        key = (scheme, netloc)
        conn = conns.get(key)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            if scheme == "https":
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout, context=self.ssl_context)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            conns[key] = conn
            with self.lock:
                self.conns.append(conn)
        return conn

    def close(self) -> None:
        """Close every thread's connections (call when the fetcher threads are done)."""
        with self.lock:
            for conn in self.conns:
                conn.close()
            self.conns.clear()

    def get(self, url: str, accept_html_only: bool = True) -> Fetched:
        """Fetch `url`. Raises OSError/HTTPException on network errors and _TooLarge past the size cap.

        With `accept_html_only`, a 2xx response that is not HTML comes back with an empty body (not downloaded).
        """
        parts = urlsplit(url)
        target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        self._wait_turn(parts.netloc)
        req_headers = [("Host", parts.netloc), ("User-Agent", self.user_agent),
                       ("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"),
                       ("Accept-Encoding", "identity"), ("Connection", "keep-alive")]
        for attempt in (0, 1):  # a kept-alive connection the server has closed fails once; retry on a fresh one
            conn = self._connection(parts.scheme, parts.netloc, fresh=attempt > 0)
            try:
                conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
                for k, v in req_headers:
                    conn.putheader(k, v)
                conn.endheaders()
                resp = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady):
                conn.close()
                if attempt:
                    raise
            except BaseException:
                conn.close()
                raise
        try:
            return self._read_response(conn, resp, url, req_headers, accept_html_only)
        except BaseException:
            conn.close()  # a half-read response leaves the connection unusable
            raise

    def _read_response(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str,
                       req_headers: list[tuple[str, str]], accept_html_only: bool) -> Fetched:
        try:
            ip = conn.sock.getpeername()[0] if conn.sock else None
        except OSError:
            ip = None
        fetched = Fetched(url, resp.status, resp.reason, resp.getheaders(), b"", req_headers, ip)
        ctype = fetched.header("content-type").split(";", 1)[0].strip().lower()
        length = fetched.header("content-length")
        skip_body = (accept_html_only and 200 <= resp.status < 300 and ctype not in HTML_TYPES) or \
            (300 <= resp.status < 400)
        if skip_body:
            conn.close()  # do not download what is not kept; the connection cannot be reused without draining
            return fetched
        if length.isdigit() and int(length) > self.max_bytes:
            raise _TooLarge(length)
        # The socket timeout bounds each read; this deadline bounds the whole page (a server that drips bytes).
        deadline = time.monotonic() + 4 * self.timeout
        parts: list[bytes] = []
        size = 0
        while True:
            piece = resp.read(min(1 << 16, self.max_bytes + 1 - size))
            if not piece:
                break
            parts.append(piece)
            size += len(piece)
            if size > self.max_bytes:
                raise _TooLarge(size)
            if time.monotonic() > deadline:
                raise TimeoutError(f"page took longer than {4 * self.timeout:.0f} s")
        if resp.will_close:
            conn.close()
        fetched.body = b"".join(parts)
        return fetched


# ---------------------------------------------------------------------------------------------------------------
# WARC output
# ---------------------------------------------------------------------------------------------------------------

class WarcFiles:
    """Numbered gzipped WARC files written under a hidden temporary name and renamed when closed.

    Files are closed only at checkpoints (every `checkpoint_pages` pages, or when a file reaches its size limit), so
    that the saved state always lists exactly the finished files.

    Each record is its own gzip member (warcio's writer), as in Common Crawl, so a reader can skip a damaged one.
    """

    def __init__(self, out: Path, prefix: str, next_index: int, max_bytes: int, info: dict[str, str]):
        self.out, self.prefix, self.index, self.max_bytes, self.info = out, prefix, next_index, max_bytes, info
        self.file: io.BufferedWriter | None = None
        self.writer: Any = None
        self.records = 0

    def name(self, index: int) -> str:
        return f"{self.prefix}-{index:05d}.warc.gz"

    def _tmp(self) -> Path:
        return self.out / f".{self.name(self.index)}.tmp"

    def _open(self) -> None:
        from warcio.warcwriter import WARCWriter

        self.file = open(self._tmp(), "wb")
        self.writer = WARCWriter(self.file, gzip=True, warc_version="1.1")
        self.writer.write_record(self.writer.create_warcinfo_record(self.name(self.index), self.info))
        self.records = 0

    def write(self, fetched: Fetched) -> None:
        from warcio.statusandheaders import StatusAndHeaders

        if self.file is None:
            self._open()
        w = self.writer
        parts = urlsplit(fetched.url)
        target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        req = w.create_warc_record(fetched.url, "request", http_headers=StatusAndHeaders(
            f"GET {target} HTTP/1.1", list(fetched.request_headers), is_http_request=True))
        # http.client has already undone chunked transfer coding: say so the way Common Crawl does.
        headers = [(("X-Crawler-" + k) if k.lower() == "transfer-encoding" else k, v) for k, v in fetched.headers]
        warc_headers = {"WARC-IP-Address": fetched.ip} if fetched.ip else None
        resp = w.create_warc_record(fetched.url, "response", payload=io.BytesIO(fetched.body),
                                    length=len(fetched.body), warc_headers_dict=warc_headers,
                                    http_headers=StatusAndHeaders(f"{fetched.status} {fetched.reason}", headers,
                                                                  protocol="HTTP/1.1"))
        w.write_request_response_pair(req, resp)
        self.records += 1

    @property
    def full(self) -> bool:
        """The open file has reached the rotation size (the crawler then checkpoints, which closes it)."""
        return self.file is not None and self.file.tell() >= self.max_bytes

    def close(self) -> str | None:
        """Finish the current file (rename it into place); its name, or None if nothing was open."""
        if self.file is None:
            return None
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        final = self.out / self.name(self.index)
        os.replace(self._tmp(), final)
        self.file = None
        self.index += 1
        return final.name

    def abandon(self) -> None:
        """Drop the unfinished file (after a crash its pages are fetched again on resume)."""
        if self.file is not None:
            self.file.close()
            self._tmp().unlink(missing_ok=True)
            self.file = None


# ---------------------------------------------------------------------------------------------------------------
# The crawl
# ---------------------------------------------------------------------------------------------------------------

class _Robots:
    """robots.txt per host, fetched once (by whichever fetcher thread needs it first)."""

    def __init__(self, fetcher: Fetcher):
        self.fetcher = fetcher
        self.parsers: dict[str, urllib.robotparser.RobotFileParser] = {}
        self.locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self.lock = threading.Lock()

    def get(self, scheme: str, netloc: str) -> urllib.robotparser.RobotFileParser:
        with self.lock:
            host_lock = self.locks[netloc]
        with host_lock:
            rp = self.parsers.get(netloc)
            if rp is None:
                rp = urllib.robotparser.RobotFileParser(f"{scheme}://{netloc}/robots.txt")
                try:
                    f = self.fetcher.get(rp.url, accept_html_only=False)
                    for _ in range(5):  # robots.txt redirects (http -> https, host aliases) are followed
                        target = normalize_url(f.header("location"), f.url) if 300 <= f.status < 400 else None
                        if target is None:
                            break
                        f = self.fetcher.get(target, accept_html_only=False)
                    if f.status in (401, 403):
                        rp.disallow_all = True
                    elif f.status >= 500:
                        rp.disallow_all = True  # a server in trouble: stay away, as search engines do
                    elif f.status >= 300:
                        rp.allow_all = True  # no robots.txt (404 and the like): everything is allowed
                    else:
                        rp.parse(f.body.decode("utf-8", "replace").splitlines())
                        crawl_delay = rp.crawl_delay(ROBOTS_AGENT)
                        if crawl_delay:
                            self.fetcher.host_delay[netloc] = float(crawl_delay)
                except (OSError, http.client.HTTPException, _TooLarge):
                    rp.allow_all = True  # no robots.txt reachable: the default web convention is allow
                rp.modified()
                self.parsers[netloc] = rp
            return rp

    def allowed(self, url: str, agent: str) -> bool:
        parts = urlsplit(url)
        return self.get(parts.scheme, parts.netloc).can_fetch(agent, url)


Item = tuple[str, int, int]  # a frontier entry: URL, links followed from a seed, redirects followed to reach it


@dataclass
class _Result:
    item: Item
    fetched: Fetched | None = None
    outcome: str = "fetched"  # "redirect" or a skip reason
    location: str | None = None  # a redirect's normalised target


def _fetch_task(item: Item, cfg: CrawlConfig, fetcher: Fetcher, robots: _Robots) -> _Result:
    """Fetch one frontier URL in a worker thread. A redirect is not followed here: its target goes back to the
    frontier, so that its request too waits for the host's delay and its hops are counted."""
    url = item[0]
    if cfg.respect_robots and not robots.allowed(url, ROBOTS_AGENT):
        return _Result(item, outcome="robots")
    try:
        f = fetcher.get(url)
    except _TooLarge:
        return _Result(item, outcome="too_large")
    except (OSError, http.client.HTTPException, ValueError) as e:
        return _Result(item, outcome="timeout" if isinstance(e, (socket.timeout, TimeoutError)) else "error")
    if 300 <= f.status < 400 and f.header("location"):
        return _Result(item, outcome="redirect", location=normalize_url(f.header("location"), url))
    if not 200 <= f.status < 300:
        return _Result(item, outcome=f"http_{f.status}")
    if f.header("content-type").split(";", 1)[0].strip().lower() not in HTML_TYPES:
        return _Result(item, outcome="non_html")
    return _Result(item, fetched=f)


@dataclass
class CrawlState:
    """Everything a crawl needs to continue: saved (atomically) at each checkpoint as crawl_state.json."""

    seeds: list[str]
    allowed_hosts: list[str]
    frontier: list[Item] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    pages: int = 0
    html_bytes: int = 0
    next_file: int = 0
    files: list[str] = field(default_factory=list)
    finished: bool = False  # the frontier ran empty (as opposed to stopping at max_pages)


class Crawler:
    def __init__(self, config: CrawlConfig):
        if not config.seeds:
            raise LmforgeError("crawl: give at least one seed URL")
        self.cfg = config
        seeds = []
        for s in config.seeds:
            u = normalize_url(s)
            if u is None:
                raise LmforgeError(f"crawl: seed is not an http(s) URL: {s!r}")
            seeds.append(u)
        self.seeds = seeds
        hosts = config.allowed_hosts or [url_host(s) for s in seeds]
        self.allowed = {h.lower() for h in hosts}
        self.out = Path(config.out)
        self.stats: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = {}  # skip reason -> a few URLs, for the report

    def _skipped(self, reason: str, url: str) -> None:
        self.stats[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(url)

    def in_scope(self, url: str) -> bool:
        return url_host(url) in self.allowed

    # -- state ---------------------------------------------------------------------------------------------------

    def _load_state(self) -> CrawlState:
        path = self.out / STATE_FILE
        if not path.is_file():
            return CrawlState(seeds=self.seeds, allowed_hosts=sorted(self.allowed),
                              frontier=[(s, 0, 0) for s in dict.fromkeys(self.seeds)],
                              seen=list(dict.fromkeys(seen_key(s) for s in self.seeds)))
        d = read_json(path, "crawl state")
        try:
            state = CrawlState(**d)
        except TypeError as e:
            raise LmforgeError(f"crawl state {path} is not from this version of lmforge: {e}") from e
        if state.seeds != self.seeds or sorted(state.allowed_hosts) != sorted(self.allowed):
            raise LmforgeError(f"{self.out} holds a crawl of other seeds or hosts ({', '.join(state.seeds)}); "
                               "use another --out folder")
        state.frontier = [(u, int(dep), int(hops)) for u, dep, hops in state.frontier]
        return state

    def _clean_leftovers(self, state: CrawlState) -> None:
        """Remove files written after the last checkpoint: their pages are still in the saved frontier."""
        for f in self.out.glob(f".{self.cfg.warc_prefix}-*.warc.gz.tmp"):
            f.unlink()
        for f in self.out.glob(f"{self.cfg.warc_prefix}-*.warc.gz"):
            if f.name not in state.files:
                f.unlink()

    def _save_state(self, state: CrawlState, frontier: "_Frontier", seen: set[str], warcs: WarcFiles,
                    pending: list[Item]) -> None:
        name = warcs.close()
        if name:
            state.files.append(name)
        state.next_file = warcs.index
        state.frontier = pending + frontier.items()
        state.seen = sorted(seen)
        state.stats = dict(self.stats)
        state.examples = self.examples
        write_json(self.out / STATE_FILE, asdict(state))

    # -- main loop -------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Crawl until max_pages pages are archived or the frontier is empty; return the statistics."""
        from tqdm import tqdm

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        self._clean_leftovers(state)
        self.stats.update(state.stats)
        self.examples = {k: list(v) for k, v in state.examples.items()}
        seen = set(state.seen)
        frontier = _Frontier(state.frontier)
        fetcher = Fetcher(cfg.user_agent, cfg.timeout, cfg.max_page_bytes, cfg.delay)
        robots = _Robots(fetcher)
        warcs = WarcFiles(self.out, cfg.warc_prefix, state.next_file, cfg.warc_max_bytes, {
            "software": "lmforge crawl", "format": "WARC File Format 1.1", "http-header-user-agent": cfg.user_agent,
            "robots": "obeyed" if cfg.respect_robots else "ignored", "isPartOf": ",".join(self.seeds)})
        inflight: collections.deque[tuple[Item, cf.Future]] = collections.deque()
        host_next: dict[str, float] = {}
        since_checkpoint = 0
        last_checkpoint = time.monotonic()
        t0 = time.perf_counter()
        start_pages = state.pages
        bar = tqdm(total=cfg.max_pages, initial=state.pages, unit="page", desc="crawl", disable=not cfg.progress,
                   dynamic_ncols=True)
        pool = cf.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="fetch")
        # Ctrl-C only sets a flag, looked at between two pages: the state saved then is exactly consistent.
        interrupted = threading.Event()
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
        try:
            while True:
                if interrupted.is_set():
                    self._save_state(state, frontier, seen, warcs, [it for it, _ in inflight])
                    raise KeyboardInterrupt
                # Hand out URLs: at most 2x workers outstanding, never more than the pages still wanted.
                now = time.monotonic()
                while (len(inflight) < 2 * cfg.workers and state.pages + len(inflight) < cfg.max_pages):
                    item = frontier.pop_ready(host_next, now)
                    if item is None:
                        break
                    host = url_host(item[0])
                    host_next[host] = now + fetcher.delay_for(host)
                    inflight.append((item, pool.submit(_fetch_task, item, cfg, fetcher, robots)))
                if not inflight:
                    if not frontier or state.pages >= cfg.max_pages:
                        break
                    time.sleep(max(0.0, min(host_next.values(), default=now) - time.monotonic()) + 0.001)
                    continue
                # Process results strictly in hand-out order (determinism), as far as they are done. Wake up early
                # only if a host's delay is all that keeps a URL from being handed out.
                wait_for = 0.5  # at the latest, to look at the interrupt flag
                if frontier and len(inflight) < 2 * cfg.workers and state.pages + len(inflight) < cfg.max_pages:
                    wait_for = min(wait_for, max(0.001, frontier.next_ready_time(host_next) - time.monotonic()))
                cf.wait([inflight[0][1]], timeout=wait_for)
                while inflight and inflight[0][1].done() and not interrupted.is_set():
                    _, fut = inflight.popleft()
                    added = self._process(fut.result(), state, frontier, seen, warcs)
                    if added:
                        bar.update(1)
                        since_checkpoint += 1
                        if (since_checkpoint >= cfg.checkpoint_pages or warcs.full
                                or time.monotonic() - last_checkpoint >= cfg.checkpoint_seconds):
                            self._save_state(state, frontier, seen, warcs,
                                             [it for it, _ in inflight])
                            since_checkpoint, last_checkpoint = 0, time.monotonic()
                bar.set_postfix_str(f"{human_bytes(state.html_bytes)} queued={len(frontier)}", refresh=False)
            state.finished = not frontier and not inflight
            self._save_state(state, frontier, seen, warcs, [])
        except BaseException:
            warcs.abandon()  # no-op after an interrupt (the state and file were saved); else back to the checkpoint
            raise
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            pool.shutdown(wait=True, cancel_futures=True)
            fetcher.close()
            bar.close()
        seconds = time.perf_counter() - t0
        result = {"out": str(self.out), "pages": state.pages, "html_bytes": state.html_bytes,
                  "warc_files": list(state.files), "finished": state.finished,
                  "pages_this_run": state.pages - start_pages, "seconds": round(seconds, 2),
                  "pages_per_second": round((state.pages - start_pages) / seconds, 2) if seconds else 0.0,
                  "stats": dict(sorted(self.stats.items())), "examples": self.examples}
        write_json(self.out / STATS_FILE, result)
        return result

    def _process(self, res: _Result, state: CrawlState, frontier: "_Frontier", seen: set[str],
                 warcs: WarcFiles) -> bool:
        """Archive a fetched page and queue its new links (or queue a redirect's target); True if a page was archived."""
        url, depth, hops = res.item
        if res.outcome == "redirect":
            self.stats["redirects"] += 1
            target = res.location
            if target is None or not self.in_scope(target):
                self._skipped("off_scope", target or url)
            elif hops + 1 > self.cfg.max_redirects:
                self._skipped("too_many_redirects", url)
            elif seen_key(target) in seen:  # onto a page the crawl already has or will have
                self._skipped("duplicate_redirect", url)
            else:
                seen.add(seen_key(target))
                frontier.add((target, depth, hops + 1))
            return False
        if res.outcome != "fetched":
            self._skipped(res.outcome, url)
            return False
        assert res.fetched is not None
        if state.pages >= self.cfg.max_pages:
            return False
        warcs.write(res.fetched)
        state.pages += 1
        state.html_bytes += len(res.fetched.body)
        self.stats["fetched"] += 1
        if self.cfg.max_depth is not None and depth >= self.cfg.max_depth:
            return True
        html, _ = decode_html(res.fetched.body, res.fetched.header("content-type"))
        for link in extract_links(html or "", url):
            key = seen_key(link)
            if key in seen:
                continue
            seen.add(key)
            if not self.in_scope(link):
                self._skipped("off_scope", link)
                continue
            frontier.add((link, depth + 1, 0))
        return True


class _Frontier:
    """FIFO queues per host; URLs are handed out breadth-first, from whichever host may be asked next."""

    def __init__(self, items: list[Item]):
        self.queues: dict[str, collections.deque[Item]] = {}
        for item in items:
            self.add(item)

    def add(self, item: Item) -> None:
        self.queues.setdefault(url_host(item[0]), collections.deque()).append(item)

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def items(self) -> list[Item]:
        return [item for q in self.queues.values() for item in q]

    def pop_ready(self, host_next: dict[str, float], now: float) -> Item | None:
        for host, q in self.queues.items():
            if host_next.get(host, 0.0) <= now:
                item = q.popleft()
                if not q:
                    del self.queues[host]
                return item
        return None

    def next_ready_time(self, host_next: dict[str, float]) -> float:
        return min((host_next.get(h, 0.0) for h in self.queues), default=0.0)


def crawl(config: CrawlConfig) -> dict[str, Any]:
    """Run (or resume) a crawl into `config.out`; see `Crawler`."""
    return Crawler(config).run()


def iter_crawled_urls(out: str | Path) -> Iterator[str]:
    """The URLs of the pages archived in a crawl folder, file by file (for inspection and tests)."""
    from lmforge.data.readers import expand_inputs, iter_warc_records

    for f in expand_inputs([out]):
        for headers, _ in iter_warc_records(f):
            if headers.get("warc-type") == "response":
                yield headers.get("warc-target-uri", "").strip("<>")


def crawl_pydoc(config: CrawlConfig) -> dict[str, Any]:
    """Serve the standard library's documentation on localhost, crawl it into `config.out`, stop the server.

    The seeds are the site's root. A resumed crawl asks for the port it used before (URLs in the saved frontier
    carry it); the first run takes a free port.
    """
    from dataclasses import replace

    from lmforge.data.pydoc_site import PydocSite, PydocSiteConfig

    port = 0
    state_path = Path(config.out) / STATE_FILE
    if state_path.is_file():
        seeds = read_json(state_path, "crawl state").get("seeds") or []
        port = urlsplit(seeds[0]).port or 0 if seeds else 0
    site = PydocSite(PydocSiteConfig(port=port))
    try:
        site.start()
    except LmforgeError as e:
        if not port:
            raise
        raise LmforgeError(f"{e}: resuming the crawl in {config.out} needs the port it began with; "
                           "free it or crawl into a new --out folder") from e
    try:
        return crawl(replace(config, seeds=[site.url], allowed_hosts=None))
    finally:
        site.stop()
