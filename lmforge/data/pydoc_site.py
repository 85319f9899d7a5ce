"""The embedded default website: the standard library's documentation, served by pydoc on a localhost port.

No machine that runs the default pipeline can reach the internet, yet the crawler, the WARC files and every data
step should run on real HTML with real links. pydoc renders one page per module (and per package, topic and
keyword) with links between them, wherever Python is installed: a site of some hundreds of pages.

The server runs in a separate process, a fresh interpreter that sees only the standard library
(`lmforge.data.stdlib_process`: no site-packages, so the index lists the standard library and not the packages of the
virtual environment; a fixed hash seed and environment, since pages print sets in hash order and `os.environ` as
module data). Rendering a page imports its module, and what pydoc writes depends on the modules already imported
(it links a base class only when its module is loaded, lists a class only when `inspect.getmodule` finds it,
prints `__warningregistry__` counters): rendered in a long-lived process, a page depended on which pages that
process had rendered before, so two crawls of one machine archived 19 pages differently. So each page is rendered in
a child forked from the server, whose imports are the same for every page: a page is a function of its URL and the
Python installation. (The server imports every stdlib package's `__init__` once, first, so that the children need
not each import theirs again. Forked children also render in parallel without seeing each other's half-initialised
modules, which rendering threads did.) Memory addresses (`<object object at 0x7f...>`, ctypes' library handles)
are removed from the page, as the only part that still changes from run to run, and `sys.argv` is that of the
server, not the port and path it was started with. A few modules do things on import (`antigravity` opens a browser,
`unittest.__main__` runs tests, `ensurepip.__main__` installs pip, `test.autotest` runs the test suite), so those
pages are refused with 404 and kept out by robots.txt, and the process has no terminal: its output goes to
/dev/null. A page that fails to render is a 404 (pydoc itself would send an error page with status 200). A render
that waits longer than `RENDER_WAIT` seconds for one of the `RENDER_SLOTS` gets a 503 instead of hanging the
client, and one that runs longer than `RENDER_LIMIT` seconds (an import that never returns) is killed: a 504. If a
server process ends anyway, `PydocSite` starts a fresh process on the same port, so the crawl goes on.

This file runs without lmforge importable (the server process sees only the standard library).
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

# Modules whose import has side effects, and test suites (thousands of pages of test code, some of which run on
# import). A page is refused when any dotted component of its module name is in this set or starts with "test".
DENIED_COMPONENTS = {"__main__", "antigravity", "this", "idlelib", "turtledemo", "idle_test"}
RENDER_WAIT = 60.0
RENDER_LIMIT = 30.0
RENDER_SLOTS = 4  # pages rendered at once by one server process (forked children)
ERROR_TITLE = "<title>Pydoc: Error - "
# What differs between two renders of one page: memory addresses in reprs, ctypes' library handles.
# (pydoc writes the spaces of some signatures as &nbsp;)
_ADDRESSES = re.compile(r"(?: |&nbsp;)at(?: |&nbsp;)0x[0-9a-fA-F]+|,(?: |&nbsp;)handle(?: |&nbsp;)[0-9a-fA-F]+")
ROBOTS_TXT = """# lmforge's pydoc site: search results are generated pages and the excluded modules run code on import.
User-agent: *
Disallow: /search?
Disallow: /get?
Disallow: /test
Disallow: /_test
Disallow: /antigravity
Disallow: /this.
Disallow: /idlelib
Disallow: /turtledemo
"""


def denied(path: str) -> bool:
    """True if the request path names a module the server refuses to import."""
    name, _, query = path.lstrip("/").partition("?")
    if query:
        if name in ("search", "get"):
            return True
        name = query.partition("=")[2]  # topic?key=NAME also imports NAME when it is not a topic
    if name.endswith(".html"):
        name = name[:-5]
    parts = [p for p in name.split(".") if p]
    return any(p in DENIED_COMPONENTS or p.startswith(("test", "_test")) for p in parts)


@dataclass
class PydocSiteConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port chosen by the operating system
    startup_timeout: float = 30.0
    # Server processes sharing the port (the kernel spreads connections over them), each rendering up to
    # RENDER_SLOTS pages at once in forked children.
    processes: int = 2


class PydocSite:
    """A context manager that serves pydoc's pages for the standard library; `.url` is the site's root URL.

    >>> with PydocSite() as site:  # doctest: +SKIP
    ...     crawl([site.url], ...)
    """

    def __init__(self, config: PydocSiteConfig | None = None):
        self.config = config or PydocSiteConfig()
        self.procs: list[subprocess.Popen] = []
        self.port: int | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the pydoc site is not running")
        return f"http://{self.config.host}:{self.port}/"

    def _spawn(self, port: int) -> int:
        """Start one server process on `port` (0: any free port) and return the port it listens on."""
        from lmforge.data.stdlib_process import STDLIB_CWD, STDLIB_ENV, stdlib_python

        cmd = stdlib_python(__file__, "--host", self.config.host, "--port", str(port))
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True, env=STDLIB_ENV, cwd=STDLIB_CWD)
        self.procs.append(proc)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        deadline = time.monotonic() + self.config.startup_timeout
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            chunk = proc.stdout.read()
            if chunk:
                line += chunk
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.02)
        proc.stdout.close()
        if not line.startswith(b"PORT "):
            proc.kill()
            proc.wait()
            self.procs.remove(proc)
            from lmforge.utils import LmforgeError

            raise LmforgeError(f"the pydoc site did not start on {self.config.host}:{port}")
        return int(line.split()[1])

    def start(self) -> "PydocSite":
        """Start the server processes: the first picks the port, the others share it (SO_REUSEPORT)."""
        try:
            port = self._spawn(self.config.port)
            for _ in range(max(1, self.config.processes) - 1):
                self._spawn(port)
        except BaseException:
            self.stop()
            raise
        self.port = port
        self._stopping.clear()
        self._monitor = threading.Thread(target=self._respawn, name="pydoc-site-monitor", daemon=True)
        self._monitor.start()
        return self

    def _respawn(self) -> None:
        """Replace server processes that ended (a page whose render hung past RENDER_LIMIT ends its process)."""
        while not self._stopping.wait(0.5):
            for proc in list(self.procs):
                if proc.poll() is not None and not self._stopping.is_set() and self.port is not None:
                    self.procs.remove(proc)
                    try:
                        self._spawn(self.port)
                        self.restarts += 1
                    except Exception:  # the port was taken meanwhile: the others keep serving, or none does and
                        # the crawler's requests fail fast (connection refused) instead of hanging
                        pass

    def stop(self) -> None:
        self._stopping.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join()
            self._monitor = None
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs = []
        self.port = None

    def __enter__(self) -> "PydocSite":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _render_in_child(path: str) -> tuple[int, bytes]:
    """(status, page) of one pydoc page, rendered in a child forked from this server process, so that what the page's
    imports do (and what earlier pages imported) never reaches the next page. A child that runs past RENDER_LIMIT is
    killed: 504."""
    import pydoc  # already imported by `_serve`: no import runs in a thread that forks (a held module lock)
    import signal

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: render, write, leave (whatever happens) without running any of the server's code
        try:
            os.close(read_end)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the child ends itself even if its server is gone
            signal.alarm(int(RENDER_LIMIT) + 5)
            try:
                page = pydoc._url_handler(path, "text/html")
            except BaseException:  # a module may even call sys.exit on import
                page = ERROR_TITLE
            with os.fdopen(write_end, "wb") as out:
                out.write(_ADDRESSES.sub("", page).encode("utf-8", "surrogateescape"))
        finally:
            os._exit(0)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + RENDER_LIMIT
    try:
        while (left := deadline - time.monotonic()) > 0 and select.select([read_end], [], [], left)[0]:
            chunk = os.read(read_end, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)  # a hung import cannot be interrupted
            return 504, b"<html><body>render timed out</body></html>"
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    page = b"".join(chunks)
    return (404 if not page or page[:400].find(ERROR_TITLE.encode()) >= 0 else 200), page


def _serve(host: str, port: int) -> None:
    """The server process: pydoc's page generator behind a threaded HTTP server, a forked child per page."""
    import http.server
    import pydoc
    import signal

    sys.argv = sys.argv[:1]  # the sys page shows the server's file name (see stdlib_process), not its port
    sys.orig_argv = ["python", *sys.argv]
    render_slots = threading.BoundedSemaphore(RENDER_SLOTS)

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "lmforge-pydoc-site"
        protocol_version = "HTTP/1.1"

        def send_page(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("#", 1)[0]
            if path == "/robots.txt":
                return self.send_page(200, ROBOTS_TXT.encode(), "text/plain; charset=utf-8")
            if denied(path):
                return self.send_page(404, b"<html><body>not served</body></html>", "text/html; charset=utf-8")
            if path.endswith(".css"):
                try:
                    css = pydoc._url_handler(path, "text/css")
                except OSError:
                    return self.send_page(404, b"", "text/css")
                return self.send_page(200, css.encode("utf-8"), "text/css; charset=utf-8")
            if not render_slots.acquire(timeout=RENDER_WAIT):
                return self.send_page(503, b"<html><body>busy</body></html>", "text/html; charset=utf-8")
            try:
                status, page = _render_in_child(path)
            finally:
                render_slots.release()
            self.send_page(status, page, "text/html; charset=utf-8")

        do_HEAD = do_GET

        def log_message(self, *args) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 64

        def server_bind(self) -> None:
            import socket

            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

    tell_port = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # modules that print on import (this, ...) print nowhere
    os.dup2(devnull, 2)
    _import_packages()
    server = Server((host, port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    tell_port.write(f"PORT {server.server_address[1]}\n")
    tell_port.close()
    server.serve_forever(poll_interval=0.2)


def _import_packages() -> None:
    """Import every package of the standard library the site serves (their `__init__` only: 0.13 s for 30 with
    Python 3.11), in name order, before any page is rendered. Every forked child then starts from them instead of
    importing its package again: asyncio's pages each imported all of asyncio (130 ms). The result is still the
    same for every page and every run; a package that fails to import is left out the same way each time."""
    import importlib
    import pkgutil

    for name in sorted(m.name for m in pkgutil.iter_modules() if m.ispkg and not denied(f"/{m.name}")):
        try:
            importlib.import_module(name)
        except BaseException:  # a package that cannot load here is not preloaded, in every run alike
            pass


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="serve the standard library's pydoc pages (used by lmforge)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    _serve(a.host, a.port)
