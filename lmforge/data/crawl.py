"""A breadth-first web crawler that writes gzipped WARC files and resumes from its saved frontier.

The shape follows the crawlers behind Common Crawl (Nutch, Heritrix, StormCrawler) scaled down to one process:
a frontier of normalised URLs and a seen-set, a scope (the seeds' hosts unless told otherwise), robots.txt and a
per-host delay between requests, a pool of fetcher threads (fetching is waiting on sockets, so threads are enough and
the standard library's `http.client` needs nothing installed), a cap on the size and the time of every page, and a
bound on redirect chains. Only HTML responses are archived, each as a request + response record pair (the WARC
form of Common Crawl, readable by warcio, FastWARC and `lmforge.data.warc`).

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
import math
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from lmforge.data.charset import decode_html
from lmforge.data.fetch import Fetcher, Robots, TooLarge
from lmforge.data.urls import ROBOTS_AGENT, extract_links, normalize_url, seen_key, url_host
from lmforge.data.warc import HTML_TYPES, Fetched, WarcFiles, iter_warc_records
from lmforge.utils import LmforgeError, human_bytes, read_json, remove_stale_temporaries, write_json

USER_AGENT = "lmforge-crawler/0.1 (language-model training data; honours robots.txt)"
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

    def __post_init__(self) -> None:
        """Check every number once, here, naming the flag that sets it: a negative timeout or page size would
        otherwise surface as a traceback deep in a fetcher thread, or as a crawl that archives nothing."""
        for name, flag, whole, low, high, unit in _BOUNDS:
            value = getattr(self, name)
            if value is None and name == "max_depth":
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if whole and number and unit > 1:
                value = round(value)  # a size given in MiB on the command line
            if not number or not low <= value <= high or (whole and not float(value).is_integer()):
                shown = value / unit if number else value
                raise LmforgeError(f"{flag} must be {'a whole number' if whole and unit == 1 else 'a number'} "
                                   f"in [{low / unit:g}, {high / unit:g}], got {shown!r}")
            setattr(self, name, int(value) if whole else float(value))


# (field, flag, whole number, lowest, highest, bytes per flag unit): sizes are bytes here, MiB on the command line
_BOUNDS = [
    ("max_pages", "--max-pages", True, 1, 10**9, 1), ("max_depth", "--max-depth", True, 0, 10**6, 1),
    ("workers", "--workers", True, 1, 256, 1), ("delay", "--delay", False, 0, 3600, 1),
    ("timeout", "--timeout", False, 0.001, 3600, 1), ("max_page_bytes", "--max-page-mb", True, 1, 1 << 30, 1 << 20),
    ("max_redirects", "--max-redirects", True, 0, 100, 1),
    ("warc_max_bytes", "--warc-max-mb", True, 1, 1 << 40, 1 << 20),
    ("checkpoint_pages", "--checkpoint-pages", True, 1, 10**9, 1),
    ("checkpoint_seconds", "--checkpoint-seconds", False, 0, 10**6, 1),
]


Item = tuple[str, int, int]  # a frontier entry: URL, links followed from a seed, redirects followed to reach it


@dataclass
class _Result:
    item: Item
    fetched: Fetched | None = None
    outcome: str = "fetched"  # "redirect" or a skip reason
    location: str | None = None  # a redirect's normalised target


def _fetch_task(item: Item, cfg: CrawlConfig, fetcher: Fetcher, robots: Robots) -> _Result:
    """Fetch one frontier URL in a worker thread. A redirect is not followed here: its target goes back to the
    frontier, so that its request too waits for the host's delay and its hops are counted."""
    url = item[0]
    if cfg.respect_robots and not robots.allowed(url, ROBOTS_AGENT):
        return _Result(item, outcome="robots")
    try:
        f = fetcher.get(url)
    except TooLarge:
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


def read_crawl_state(path: Path) -> CrawlState:
    """The saved state of a crawl, every field checked: a damaged or hand-edited file is refused by name instead
    of failing later inside the crawl loop."""
    d = read_json(path, "crawl state")
    try:
        state = CrawlState(**d) if isinstance(d, dict) else None
    except TypeError:
        state = None
    if state is None or not _state_is_valid(state):
        raise LmforgeError(f"crawl state {path} is corrupt or from another version of lmforge; "
                           "delete it (or the whole --out folder) to start the crawl again")
    state.frontier = [(u, dep, hops) for u, dep, hops in state.frontier]
    return state


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _state_is_valid(state: CrawlState) -> bool:
    """Every field of the expected type; seeds canonical; file names plain (the crawl deletes files not listed)."""
    return (_strings(state.seeds) and all(normalize_url(u) == u for u in state.seeds)
            and _strings(state.allowed_hosts) and _strings(state.seen)
            and _strings(state.files) and all("/" not in f for f in state.files) and isinstance(state.finished, bool)
            and all(_count(getattr(state, k)) for k in ("pages", "html_bytes", "next_file"))
            and isinstance(state.frontier, list)
            and all(isinstance(it, list) and len(it) == 3 and isinstance(it[0], str) and _count(it[1])
                    and _count(it[2]) for it in state.frontier)
            and isinstance(state.stats, dict) and all(_count(v) for v in state.stats.values())
            and isinstance(state.examples, dict) and all(_strings(v) for v in state.examples.values()))


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
        state = read_crawl_state(path)
        if state.seeds != self.seeds or sorted(state.allowed_hosts) != sorted(self.allowed):
            raise LmforgeError(f"{self.out} holds a crawl of other seeds or hosts ({', '.join(state.seeds)}); "
                               "use another --out folder")
        return state

    def _clean_leftovers(self, state: CrawlState) -> None:
        """Remove files written after the last checkpoint: their pages are still in the saved frontier (and the
        temporaries of a state file whose writer was killed)."""
        remove_stale_temporaries(self.out)
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
        robots = Robots(fetcher)
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
                now = time.monotonic()
                self._hand_out(state, frontier, inflight, host_next, now, lambda it: pool.submit(
                    _fetch_task, it, cfg, fetcher, robots), fetcher)
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
        return self._summary(state, start_pages, time.perf_counter() - t0)

    def _hand_out(self, state: CrawlState, frontier: "_Frontier", inflight: collections.deque, host_next: dict,
                  now: float, submit: Callable[[Item], cf.Future], fetcher: Fetcher) -> None:
        """Start fetches: at most 2x workers outstanding, never more than the pages still wanted, and each host's
        next URL only once its delay has passed."""
        while len(inflight) < 2 * self.cfg.workers and state.pages + len(inflight) < self.cfg.max_pages:
            item = frontier.pop_ready(host_next, now)
            if item is None:
                break
            host = url_host(item[0])
            host_next[host] = now + fetcher.delay_for(host)
            inflight.append((item, submit(item)))

    def _summary(self, state: CrawlState, start_pages: int, seconds: float) -> dict[str, Any]:
        """The statistics of the crawl so far, also written to crawl_stats.json."""
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
    from lmforge.data.readers import expand_inputs

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
        seeds = read_crawl_state(state_path).seeds
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
