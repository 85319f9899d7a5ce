"""Fetching pages politely: one GET over kept-alive connections, robots.txt per host, a per-host delay.

The standard library's `http.client` is enough (fetching is waiting on sockets, so the crawler's threads suffice
and nothing needs installing). Redirects are not followed here: the crawler puts their targets back in its
frontier, so that every hop waits for its host's delay and counts against the redirect bound.
"""

from __future__ import annotations

import collections
import http.client
import ssl
import threading
import time
import urllib.robotparser
from urllib.parse import urlsplit, urlunsplit

from lmforge.data.urls import ROBOTS_AGENT, normalize_url
from lmforge.data.warc import HTML_TYPES, Fetched


class TooLarge(Exception):
    """A page over the size cap (its Content-Length said so, or its body grew past it)."""


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
        """Fetch `url`. Raises OSError/HTTPException on network errors and TooLarge past the size cap.

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
            raise TooLarge(length)
        # The socket timeout bounds each read; this deadline bounds the whole page (a server that drips bytes).
        deadline = time.monotonic() + 4 * self.timeout
        parts: list[bytes] = []
        size = 0
        while True:
            # read1: what has arrived, so the deadline holds against a server that drips bytes (read(n) waits for
            # all n); at a declared length's end, read() marks the response complete so the connection is reused.
            piece = resp.read() if resp.length == 0 else resp.read1(min(1 << 16, self.max_bytes + 1 - size))
            if not piece:
                break
            parts.append(piece)
            size += len(piece)
            if size > self.max_bytes:
                raise TooLarge(size)
            if time.monotonic() > deadline:
                raise TimeoutError(f"page took longer than {4 * self.timeout:.0f} s")
        if resp.will_close:
            conn.close()
        fetched.body = b"".join(parts)
        return fetched



class Robots:
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
                except (OSError, http.client.HTTPException, TooLarge):
                    rp.allow_all = True  # no robots.txt reachable: the default web convention is allow
                rp.modified()
                self.parsers[netloc] = rp
            return rp

    def allowed(self, url: str, agent: str) -> bool:
        parts = urlsplit(url)
        return self.get(parts.scheme, parts.netloc).can_fetch(agent, url)

