"""The judgement store of a sample folder: SQLite in WAL mode, one transaction per judgement.

Items are made from the sample folder when the store is opened: in `pair` mode one item per pair of responses of
a prompt (C(K,2) per prompt), in `rank` mode one item per prompt (all K responses, ordered by the annotator; a
ranking yields C(K,2) pairs). A pair item that a verifiable check decides (`simulate.gold_verdict`) is gold.

Assignment (`next_item`): an annotator keeps their open item until they judge or skip it (a reload shows it
again); else, with probability `repeat_rate`, an item they judged before comes back (self-agreement); else, with
probability `gold_rate`, a gold item they have not seen (every annotator meets each gold item once); else the next
item nobody has judged `votes` times that no other annotator holds right now. Gold and repeat items may be out
with several people at once; nothing else is. The response order shown is drawn at random per assignment and
stored with the judgement.

Every judgement is validated against the annotator's open assignment and written in one transaction with
`synchronous=FULL` before the server answers 200: a `kill -9` after the answer loses nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lmforge.posttrain.simulate import BOTH_BAD, FIRST, SECOND, TIE, gold_verdict
from lmforge.utils import LmforgeError

CHOICES = ("a", "b", "tie", "both_bad", "skip")  # a/b: the response shown left/right
MAX_REASON_CHARS = 2000
MAX_ANNOTATOR_CHARS = 64
LEASE_SECONDS = 15 * 60  # an item held this long without a judgement goes back to the pool

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, prompt_item INTEGER NOT NULL, responses TEXT NOT NULL,
                                  gold TEXT, UNIQUE (prompt_item, responses));
CREATE TABLE IF NOT EXISTS judgements (id INTEGER PRIMARY KEY, annotator TEXT NOT NULL, created REAL NOT NULL,
    item INTEGER NOT NULL REFERENCES items(id), shown TEXT NOT NULL, choice TEXT NOT NULL, ranking TEXT,
    reason TEXT NOT NULL, kind TEXT NOT NULL, generation TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (annotator TEXT PRIMARY KEY, item INTEGER NOT NULL, shown TEXT NOT NULL,
                                   kind TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS judgements_item ON judgements (item);
"""


@dataclass
class StoreConfig:
    mode: str = "pair"  # pair: two responses, A/B/tie/both bad; rank: order all K responses
    votes: int = 1  # distinct annotators wanted per (non-gold) item
    repeat_rate: float = 0.1  # chance that an annotator is shown an item they judged before
    gold_rate: float = 0.2  # chance of a gold item (known answer) the annotator has not seen, while any is left
    seed: int = 0  # order of items and of the responses shown


def open_db(path: str | Path, read_only: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode with full sync: a committed judgement is on disk when commit returns. Read-only
    connections (report, export) never write, not even the checkpoint SQLite runs when the last writer closes."""
    if read_only:
        db = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, timeout=30,
                             check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db
    db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    db.row_factory = sqlite3.Row
    return db


def stored_mode(db_path: str | Path) -> str:
    """The mode an existing store was made in (read-only: reading a store never changes it)."""
    try:
        with contextlib.closing(sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM info WHERE key = 'mode'").fetchone()
    except sqlite3.DatabaseError as e:
        raise LmforgeError(f"label store {db_path}: {e}") from e
    if row is None:
        raise LmforgeError(f"label store {db_path} has no mode recorded: not a store `lmforge label` made")
    return row[0]


class LabelStore:
    """Items, assignments and judgements of one sample folder (thread-safe: one lock around the connection)."""

    def __init__(self, samples: list[dict[str, Any]], db_path: str | Path, config: StoreConfig = StoreConfig(),
                 source: str = "", read_only: bool = False) -> None:
        if config.mode not in ("pair", "rank"):
            raise LmforgeError(f"--mode must be pair or rank (got {config.mode!r})")
        if config.votes < 1:
            raise LmforgeError(f"--votes must be >= 1 (got {config.votes})")
        for flag, rate in (("--repeat-rate", config.repeat_rate), ("--gold-rate", config.gold_rate)):
            if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
                raise LmforgeError(f"{flag} must be in [0, 1) (got {rate!r})")
        self.samples = {r["item"]: r for r in samples}
        self.config, self.lock = config, threading.Lock()
        try:
            self.db = open_db(db_path, read_only)
            if not read_only:  # a reader takes the store as it is
                self.db.executescript(_SCHEMA)
                self._init_items(source)
        except sqlite3.DatabaseError as e:  # not a database, unwritable, a folder: one line naming the file
            raise LmforgeError(f"label store {db_path}: {e}") from e

    def _init_items(self, source: str) -> None:
        old = {r["key"]: r["value"] for r in self.db.execute("SELECT key, value FROM info")}
        if old and old.get("mode") != self.config.mode:
            raise LmforgeError(f"the label store holds {old.get('mode')}-mode items; use --mode {old.get('mode')}")
        rows = []
        for item, record in sorted(self.samples.items()):
            k = len(record["responses"])
            if self.config.mode == "rank":
                rows.append((item, json.dumps(list(range(k))), None))
                continue
            for i, j in itertools.combinations(range(k), 2):
                rows.append((item, json.dumps([i, j]), gold_verdict(record, record["responses"][i],
                                                                    record["responses"][j])))
        with self.transaction():
            self.db.executemany("INSERT OR IGNORE INTO items (prompt_item, responses, gold) VALUES (?, ?, ?)", rows)
            self.db.executemany("INSERT OR IGNORE INTO info VALUES (?, ?)",
                                [("mode", self.config.mode), ("source", source)])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction under the store's lock: committed whole (durably) or rolled back whole."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -------------------------------------------------------------------------------------------------------
    def progress(self, annotator: str) -> dict[str, int]:
        """Items this annotator has done (repeats aside) of all items, and their judgements in all."""
        with self.lock:
            total = self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            done = self.db.execute("SELECT COUNT(DISTINCT item) FROM judgements WHERE annotator = ? AND "
                                   "kind != 'repeat'", (annotator,)).fetchone()[0]
            judged = self.db.execute("SELECT COUNT(*) FROM judgements WHERE annotator = ?", (annotator,)).fetchone()[0]
        return {"done": done, "total": total, "judgements": judged}

    def _pick(self, annotator: str, rng: random.Random, now: float) -> tuple[int, str] | None:
        db = self.db
        mine = [r[0] for r in db.execute("SELECT DISTINCT item FROM judgements WHERE annotator = ? AND "
                                         "choice != 'skip'", (annotator,))]
        if mine and rng.random() < self.config.repeat_rate:
            return rng.choice(mine), "repeat"
        gold = db.execute("SELECT id FROM items WHERE gold IS NOT NULL AND id NOT IN (SELECT item FROM judgements "
                          "WHERE annotator = ?) ORDER BY id LIMIT 1", (annotator,)).fetchone()
        if gold is not None and rng.random() < self.config.gold_rate:
            return gold[0], "gold"
        row = db.execute(
            "SELECT id FROM items WHERE gold IS NULL AND id NOT IN (SELECT item FROM judgements WHERE annotator = ?) "
            "AND id NOT IN (SELECT item FROM leases WHERE annotator != ? AND expires > ? AND kind = 'new') "
            "AND (SELECT COUNT(DISTINCT annotator) FROM judgements j WHERE j.item = items.id AND choice != 'skip') < ? "
            "ORDER BY (id * 2654435761 + ?) % 4294967296 LIMIT 1",
            (annotator, annotator, now, self.config.votes, self.config.seed)).fetchone()
        if row is not None:
            return row[0], "new"
        return None if gold is None else (gold[0], "gold")

    def next_item(self, annotator: str) -> dict[str, Any] | None:
        """The annotator's open item (or a new assignment): {"item", "shown", "kind", "mode", prompt and responses
        in shown order}; None when nothing is left for them."""
        annotator = check_annotator(annotator)
        with self.transaction():
            lease = self.db.execute("SELECT item, shown, kind FROM leases WHERE annotator = ?",
                                    (annotator,)).fetchone()
            lease = dict(lease) if lease is not None else self._assign(annotator)
        return None if lease is None else self._payload(lease["item"], json.loads(lease["shown"]), lease["kind"])

    def _assign(self, annotator: str) -> dict[str, Any] | None:
        """Pick the annotator's next item and lease it to them, in a random shown order (inside a transaction)."""
        now = time.time()
        n = self.db.execute("SELECT COUNT(*) FROM judgements WHERE annotator = ?", (annotator,)).fetchone()[0]
        rng = random.Random(f"{self.config.seed}:{annotator}:{n}")
        picked = self._pick(annotator, rng, now)
        if picked is None:
            return None
        shown = json.loads(self.db.execute("SELECT responses FROM items WHERE id = ?", (picked[0],)).fetchone()[0])
        rng.shuffle(shown)
        lease = {"item": picked[0], "shown": json.dumps(shown), "kind": picked[1]}
        self.db.execute("INSERT INTO leases VALUES (?, ?, ?, ?, ?)",
                        (annotator, lease["item"], lease["shown"], lease["kind"], now + LEASE_SECONDS))
        return lease

    def prompt_item(self, item: int) -> int:
        """The sample record (prompt) an item compares responses of."""
        with self.lock:
            return self.db.execute("SELECT prompt_item FROM items WHERE id = ?", (item,)).fetchone()[0]

    def _payload(self, item: int, shown: list[int], kind: str) -> dict[str, Any]:
        record = self.samples[self.prompt_item(item)]
        return {"item": item, "shown": shown, "kind": kind, "mode": self.config.mode, "prompt": record["prompt"],
                "responses": [{"messages": record["responses"][s]["messages"],
                               "text": record["responses"][s]["text"]} for s in shown]}

    def record(self, annotator: str, item: Any, shown: Any, choice: Any, reason: Any = "",
               ranking: Any = None) -> int:
        """Validate one judgement against the annotator's open assignment and store it (one transaction);
        LmforgeError (nothing written) when anything is off. Returns the judgement's id."""
        annotator = check_annotator(annotator)
        _check_judgement(item, shown, choice, reason, ranking, self.config.mode)
        with self.transaction():
            return self._insert(annotator, item, shown, choice, reason, ranking)

    def _insert(self, annotator: str, item: int, shown: list[int], choice: str, reason: str,
                ranking: list[int] | None) -> int:
        row = self.db.execute("SELECT prompt_item, responses FROM items WHERE id = ?", (item,)).fetchone()
        if row is None:
            raise UnknownItem(f"item {item} does not exist")
        lease = self.db.execute("SELECT item, shown, kind FROM leases WHERE annotator = ?", (annotator,)).fetchone()
        if lease is None or lease["item"] != item or json.loads(lease["shown"]) != shown:
            raise NotAssigned(f"item {item} in this order is not the item assigned to {annotator!r}; ask for the next")
        if ranking is not None and sorted(ranking) != sorted(shown):
            raise LmforgeError("ranking must order exactly the responses shown")
        record = self.samples[row["prompt_item"]]
        generation = {"batch": record["batch"], "seed": record["seed"], "kind": record.get("kind"),
                      "finish_reasons": [record["responses"][s]["finish_reason"] for s in shown]}
        cur = self.db.execute(
            "INSERT INTO judgements (annotator, created, item, shown, choice, ranking, reason, kind, generation) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (annotator, time.time(), item, json.dumps(shown), choice, json.dumps(ranking) if ranking else None,
             reason, lease["kind"], json.dumps(generation)))
        self.db.execute("DELETE FROM leases WHERE annotator = ?", (annotator,))
        return int(cur.lastrowid)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        # Closed when the command is done, not whenever the garbage collector gets to it: the last close of a WAL
        # store checkpoints it, and that must not land in the middle of a later reader.
        self.close()


class UnknownItem(LmforgeError):
    """A judgement names an item the store does not have (the server answers 404)."""


class NotAssigned(LmforgeError):
    """A judgement of an item, or an order, that is not the annotator's open assignment (the server answers 409)."""


def check_annotator(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_ANNOTATOR_CHARS \
            or any(not c.isprintable() for c in name):
        raise LmforgeError(f"annotator must be a printable name of 1 to {MAX_ANNOTATOR_CHARS} characters")
    return name.strip()


def _int_list(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise LmforgeError(f"{name} must be a list of integers")


def _check_judgement(item: Any, shown: Any, choice: Any, reason: Any, ranking: Any, mode: str) -> None:
    """Types and ranges of one judgement, before the store is touched."""
    if not isinstance(item, int) or isinstance(item, bool):
        raise LmforgeError("item must be an integer")
    _int_list("shown", shown)
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise LmforgeError(f"reason must be text of at most {MAX_REASON_CHARS} characters")
    if mode == "rank":
        if choice != "rank" and choice != "skip":
            raise LmforgeError("choice must be rank or skip in rank mode")
        if choice == "rank":
            _int_list("ranking", ranking)
    elif choice not in CHOICES:
        raise LmforgeError(f"choice must be one of {', '.join(CHOICES)}")
    elif ranking is not None:
        raise LmforgeError("ranking is only for rank mode")


def pair_verdicts(row: sqlite3.Row, responses: list[int]) -> list[tuple[int, int, str]]:
    """(i, j, verdict) with i < j for every pair a judgement decides: a/b/tie/both_bad in pair mode, every pair
    of a ranking in rank mode (`simulate`'s FIRST/SECOND name the lower/higher sample index)."""
    shown = json.loads(row["shown"])
    if row["choice"] == "skip":
        return []
    if row["ranking"]:
        order = json.loads(row["ranking"])
        return [(i, j, FIRST if order.index(i) < order.index(j) else SECOND)
                for i, j in itertools.combinations(sorted(responses), 2)]
    i, j = sorted(responses)
    if row["choice"] in ("tie", "both_bad"):
        return [(i, j, TIE if row["choice"] == "tie" else BOTH_BAD)]
    winner = shown[0] if row["choice"] == "a" else shown[1]
    return [(i, j, FIRST if winner == i else SECOND)]
