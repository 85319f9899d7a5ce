"""The crawler against a small site served by the test: links, robots.txt, scope, limits, redirects, resume."""

from __future__ import annotations

import collections
import http.server
import threading
import time

import pytest
from warcio.archiveiterator import ArchiveIterator

from lmforge.data import warc
from lmforge.data.base import StepStats
from lmforge.data.crawl import CrawlConfig, crawl, crawl_pydoc, iter_crawled_urls
from lmforge.data.urls import extract_links, normalize_url, seen_key
from lmforge.data.readers import read_documents
from lmforge.utils import LmforgeError


def _page(title: str, *links: str) -> bytes:
    body = "".join(f'<p><a href="{h}">{h}</a></p>' for h in links)
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1>{body}</body></html>".encode()


# A tree of pages: / -> a, b, private, old (redirect), file.pdf, big, off-host; a -> p0..p5; b -> p6..p11 and back.
SITE: dict[str, tuple[int, str, bytes]] = {
    "/robots-real.txt": (200, "text/plain", b"User-agent: *\nDisallow: /private/\n"),
    "/": (200, "text/html; charset=utf-8", _page("home", "/a.html", "b.html", "/private/secret.html", "/old",
                                                 "/file.pdf", "/big.html", "http://elsewhere.invalid/x.html",
                                                 "/a.html#section", "/./b.html", "mailto:someone@example.org")),
    "/a.html": (200, "text/html", _page("a", *[f"/p{i}.html" for i in range(6)], "/")),
    "/b.html": (200, "text/html", _page("b", *[f"/p{i}.html" for i in range(6, 12)], "/a.html")),
    "/private/secret.html": (200, "text/html", _page("secret")),
    "/file.pdf": (200, "application/pdf", b"%PDF-1.4 not html"),
    "/big.html": (200, "text/html", b"<html>" + b"x" * 50_000 + b"</html>"),
    "/target.html": (200, "text/html", _page("target", "/p0.html")),
}
for _i in range(12):
    SITE[f"/p{_i}.html"] = (200, "text/html", _page(f"p{_i}", f"/p{(_i + 1) % 12}.html", "/missing.html"))
EXPECTED = {"/", "/a.html", "/b.html", "/target.html"} | {f"/p{i}.html" for i in range(12)}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.requests[self.path] += 1  # type: ignore[attr-defined]
        self.server.times.append((time.monotonic(), self.path))  # type: ignore[attr-defined]
        if self.path in ("/old", "/robots.txt"):
            self.send_response(301)
            self.send_header("Location", "/target.html" if self.path == "/old" else "/robots-real.txt")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, ctype, body = SITE.get(self.path, (404, "text/html", b"<html>not found</html>"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _start_site() -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.requests = collections.Counter()  # type: ignore[attr-defined]
    server.times = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def _stop_site(server: http.server.ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture()
def site():
    server = _start_site()
    yield server
    _stop_site(server)


def _cfg(server, out, **kw) -> CrawlConfig:
    base = f"http://127.0.0.1:{server.server_address[1]}"
    args = dict(seeds=[base + "/"], out=str(out), max_pages=100, delay=0.0, workers=4, timeout=10.0,
                max_page_bytes=20_000, checkpoint_pages=3, progress=False)
    args.update(kw)
    return CrawlConfig(**args)


def _paths(out) -> list[str]:
    return ["/" + u.split("/", 3)[3] for u in iter_crawled_urls(out)]


@pytest.mark.timeout(60)
def test_crawl_follows_links_honours_robots_scope_and_types(site, tmp_path):
    result = crawl(_cfg(site, tmp_path / "c"))
    paths = _paths(tmp_path / "c")
    assert set(paths) == EXPECTED and len(paths) == len(EXPECTED)
    assert result["finished"] and result["pages"] == len(EXPECTED)
    stats = result["stats"]
    assert stats["robots"] == 1 and stats["non_html"] == 1 and stats["too_large"] == 1
    assert stats["redirects"] == 1 and stats["off_scope"] == 1 and stats["http_404"] == 1
    assert site.requests["/private/secret.html"] == 0  # robots.txt is read before, not after
    assert result["examples"]["robots"] == [f"http://127.0.0.1:{site.server_address[1]}/private/secret.html"]
    assert result["examples"]["off_scope"] == ["http://elsewhere.invalid/x.html"]
    assert site.requests["/robots.txt"] == 1 and site.requests["/robots-real.txt"] == 1  # followed its redirect
    assert all(site.requests[p] == 1 for p in EXPECTED)  # normalisation: "#section" and "/./" are the same pages
    # Valid WARC for a peer reader: request/response pairs with HTTP headers; several files (checkpoints rotate).
    files = sorted((tmp_path / "c").glob("crawl-*.warc.gz"))
    assert len(files) == -(-len(EXPECTED) // 3)
    types = collections.Counter()
    response_ids, concurrent = set(), set()
    for f in files:
        with open(f, "rb") as fh:
            for rec in ArchiveIterator(fh):
                types[rec.rec_type] += 1
                if rec.rec_type == "response":
                    assert rec.http_headers.get_statuscode() == "200"
                    assert rec.content_stream().read().startswith(b"<html>")
                    response_ids.add(rec.rec_headers.get_header("WARC-Record-ID"))
                elif rec.rec_type == "request":
                    assert rec.http_headers.protocol == "GET" and rec.http_headers.get_header("User-Agent")
                    concurrent.add(rec.rec_headers.get_header("WARC-Concurrent-To"))
    assert types == {"warcinfo": len(files), "request": len(EXPECTED), "response": len(EXPECTED)}
    assert concurrent == response_ids
    stats_read = StepStats("read")
    docs = list(read_documents(tmp_path / "c", stats=stats_read))
    assert len(docs) == len(EXPECTED) and not stats_read.dropped
    assert {d.metadata["encoding"] for d in docs} == {"utf-8"}


@pytest.mark.timeout(60)
def test_max_pages_is_breadth_first_and_deterministic(site, tmp_path):
    crawl(_cfg(site, tmp_path / "c", max_pages=3))
    assert _paths(tmp_path / "c") == ["/", "/a.html", "/b.html"]
    crawl(_cfg(site, tmp_path / "d", max_depth=1))
    assert _paths(tmp_path / "d") == ["/", "/a.html", "/b.html", "/target.html"]  # /old redirects at depth 1


@pytest.mark.timeout(60)
def test_politeness_delay_between_requests_to_a_host(site, tmp_path):
    crawl(_cfg(site, tmp_path / "c", max_pages=5, delay=0.15, workers=4))
    starts = [t for t, _ in site.times]
    assert len(starts) >= 7  # robots.txt and its redirect, 5 pages, and what was fetched but not kept
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.14, gaps  # four fetchers, yet one request per 0.15 s to this host, robots.txt included


@pytest.mark.timeout(60)
def test_resume_after_crash_gives_same_pages_without_refetching(site, tmp_path, monkeypatch):
    crawl(_cfg(site, tmp_path / "ref"))
    reference = _paths(tmp_path / "ref")
    site.requests.clear()

    real_write = warc.WarcFiles.write
    calls = {"n": 0}

    def crashing_write(self, fetched):
        calls["n"] += 1
        if calls["n"] > 7:
            raise RuntimeError("simulated crash")
        real_write(self, fetched)

    monkeypatch.setattr(warc.WarcFiles, "write", crashing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crawl(_cfg(site, tmp_path / "b"))
    monkeypatch.setattr(warc.WarcFiles, "write", real_write)
    saved = _paths(tmp_path / "b")
    assert saved == reference[:6]  # two checkpoints of 3 pages survived; page 7 was in the unfinished file
    crawl(_cfg(site, tmp_path / "b"))
    resumed = _paths(tmp_path / "b")
    assert resumed == reference  # same pages, same order, none twice
    assert not list((tmp_path / "b").glob(".*.tmp"))
    for path in saved:  # pages in finished WARC files were not fetched again
        assert site.requests[path] == 1, path


@pytest.mark.timeout(60)
def test_resume_extends_a_crawl_and_refuses_other_seeds(site, tmp_path):
    crawl(_cfg(site, tmp_path / "c", max_pages=5))
    result = crawl(_cfg(site, tmp_path / "c", max_pages=100))
    assert result["pages_this_run"] == len(EXPECTED) - 5
    assert sorted(_paths(tmp_path / "c")) == sorted(EXPECTED)
    with pytest.raises(LmforgeError, match="other seeds"):
        crawl(_cfg(site, tmp_path / "c", seeds=["http://127.0.0.1:1/other"]))


@pytest.mark.timeout(60)
def test_pydoc_site_crawl(tmp_path):
    result = crawl_pydoc(CrawlConfig(out=str(tmp_path / "py"), max_pages=4, delay=0.0, workers=2, progress=False))
    assert result["pages"] == 4
    result = crawl_pydoc(CrawlConfig(out=str(tmp_path / "py"), max_pages=6, delay=0.0, workers=2, progress=False))
    assert result["pages"] == 6 and result["pages_this_run"] == 2  # resumed on the same port
    docs = list(read_documents(tmp_path / "py"))
    assert len(docs) == 6
    assert docs[0].url.startswith("http://127.0.0.1:") and "Python" in docs[0].text
    assert all(d.metadata["content_type"].startswith("text/html") for d in docs)


def test_url_normalisation_and_links():
    assert normalize_url("HTTP://Example.COM:80/a/./b/../c?x=1#frag") == "http://example.com/a/c?x=1"
    assert normalize_url("https://example.com:443") == "https://example.com/"
    assert normalize_url("http://example.com:8080/%7euser/%e2%82%ac") == "http://example.com:8080/~user/%E2%82%AC"
    assert normalize_url("http://Bücher.example/ä b") == "http://xn--bcher-kva.example/%C3%A4%20b"
    assert normalize_url("mailto:a@b.c") is None and normalize_url("javascript:void(0)") is None
    assert seen_key("http://h/p?b=2&a=1") == seen_key("http://h/p?a=1&b=2")
    html = ('<base href="/docs/"><a href="x.html#t">x</a><A HREF=\'../y.html?q=1&amp;r=2\'>y</A>'
            '<!-- <a href="hidden.html"> --><a rel="nofollow" href="no.html"><a href="x.html">again</a>')
    assert extract_links(html, "http://h:81/p/q.html") == ["http://h:81/docs/x.html", "http://h:81/y.html?q=1&r=2"]
    assert extract_links('<meta name="Robots" content="noindex, nofollow">' + html, "http://h/") == []
    assert len(extract_links('<meta name="robots" content="noarchive"><meta charset="utf-8">' + html, "http://h/")) == 2


@pytest.mark.timeout(60)
def test_cli_crawl(site, tmp_path, capsys):
    from lmforge.cli import main

    url = f"http://127.0.0.1:{site.server_address[1]}/"
    assert main(["crawl", url, "--out", str(tmp_path / "c"), "--max-pages", "4", "--delay", "0", "--quiet"]) == 0
    assert '"pages": 4' in capsys.readouterr().out
    assert main(["crawl", "--out", str(tmp_path / "d")]) == 2  # neither seeds nor --pydoc


@pytest.mark.timeout(60)
def test_pydoc_site_survives_a_dead_server_process():
    import os
    import signal
    import time
    import urllib.request

    from lmforge.data.pydoc_site import PydocSite

    with PydocSite() as site:
        assert b"Disallow: /search?" in urllib.request.urlopen(site.url + "robots.txt", timeout=20).read()
        for page in ("unittest.__main__.html", "topic?key=test.autotest"):  # these run tests on import: refused
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(site.url + page, timeout=20)
        procs = list(site.procs)
        for p in procs:  # a server process that dies (killed, out of memory): a fresh one takes its port
            os.kill(p.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while site.restarts < len(procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert site.restarts == len(procs)
        assert b"json" in urllib.request.urlopen(site.url + "json.html", timeout=30).read()
        everything = procs + list(site.procs)
    assert all(p.poll() is not None for p in everything)  # stopped: no server process left behind


@pytest.mark.timeout(60)
def test_ctrl_c_saves_everything_and_resumes(site, tmp_path, monkeypatch):
    import signal

    crawl(_cfg(site, tmp_path / "ref"))
    reference = _paths(tmp_path / "ref")
    real_write = warc.WarcFiles.write
    calls = {"n": 0}

    def write_then_ctrl_c(self, fetched):
        real_write(self, fetched)
        calls["n"] += 1
        if calls["n"] == 4:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(warc.WarcFiles, "write", write_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        crawl(_cfg(site, tmp_path / "b", checkpoint_pages=100))
    assert _paths(tmp_path / "b") == reference[:4]  # the open file was closed, not lost
    crawl(_cfg(site, tmp_path / "b", checkpoint_pages=100))
    assert _paths(tmp_path / "b") == reference


@pytest.mark.timeout(60)
def test_warc_files_rotate_by_size_and_all_are_kept(site, tmp_path):
    result = crawl(_cfg(site, tmp_path / "c", max_pages=6, checkpoint_pages=100, warc_max_bytes=1))
    files = sorted(p.name for p in (tmp_path / "c").glob("crawl-*.warc.gz"))
    assert files == result["warc_files"] and len(files) == 6  # one page per file at this size limit
    crawl(_cfg(site, tmp_path / "c", max_pages=8, checkpoint_pages=100, warc_max_bytes=1))  # resume keeps them
    assert len(list((tmp_path / "c").glob("crawl-*.warc.gz"))) == 8 and len(_paths(tmp_path / "c")) == 8
    # a time-based checkpoint (here: after every page, as 0 s have always passed) rotates files as well
    result = crawl(_cfg(site, tmp_path / "d", max_pages=5, checkpoint_pages=100, checkpoint_seconds=0.0))
    assert len(result["warc_files"]) == 5


@pytest.mark.timeout(60)
def test_two_hosts_in_scope_each_with_its_own_delay(site, tmp_path):
    other = _start_site()
    try:
        hosts = [f"127.0.0.1:{srv.server_address[1]}" for srv in (site, other)]
        t0 = time.monotonic()
        result = crawl(_cfg(site, tmp_path / "c", seeds=[f"http://{h}/" for h in hosts], allowed_hosts=hosts,
                            delay=0.1, max_pages=100))
        elapsed = time.monotonic() - t0
        urls = list(iter_crawled_urls(tmp_path / "c"))
        for host in hosts:
            assert {"/" + u.split("/", 3)[3] for u in urls if u.split("/")[2] == host} == EXPECTED
        assert result["pages"] == 2 * len(EXPECTED) and result["finished"]
        # ~21 requests per host at 0.1 s: the two hosts were crawled side by side, not one after the other
        assert elapsed < 0.1 * (len(site.times) + len(other.times)) * 0.8
    finally:
        _stop_site(other)


@pytest.mark.timeout(30)
def test_pydoc_render_that_hangs_is_killed(monkeypatch):
    """A page whose import never returns: its forked child is killed after RENDER_LIMIT, the server answers 504."""
    import pydoc

    from lmforge.data import pydoc_site

    monkeypatch.setattr(pydoc_site, "RENDER_LIMIT", 0.5)
    monkeypatch.setattr(pydoc, "_url_handler", lambda path, kind: time.sleep(60))
    t0 = time.monotonic()
    status, _ = pydoc_site._render_in_child("/hangs.html")
    assert status == 504 and time.monotonic() - t0 < 10
    monkeypatch.setattr(pydoc, "_url_handler", lambda path, kind: "<html>fine at 0x7f00ab12 ok</html>")
    assert pydoc_site._render_in_child("/fine.html") == (200, b"<html>fine ok</html>")  # addresses removed
