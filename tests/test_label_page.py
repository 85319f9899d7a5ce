"""The labeling page and its server: acknowledged judgements survive `kill -9`, malformed ones get a 4xx and change
nothing, two annotators never hold the same item at once, and a real browser labels with the keyboard."""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from preference_helpers import write_sample_folder

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def label_server(folder: Path, *flags: str):
    """`lmforge label` in its own process on a free port of 127.0.0.1; yields (base url, process); always stopped."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "label", "--pairs", str(folder), "--port", str(port),
                             *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"label server did not start: {proc.stdout.read().decode()}")
                time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


def post(url: str, body, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def judgements(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT annotator, item, shown, choice, reason FROM judgements ORDER BY id").fetchall()


def test_an_acknowledged_judgement_survives_kill_9(tmp_path):
    folder = write_sample_folder(tmp_path / "s")
    with label_server(folder) as (url, proc):
        status, got = post(url + "/api/next", {"annotator": "ann"})
        assert status == 200
        item = got["item"]
        status, ack = post(url + "/api/judgement", {"annotator": "ann", "item": item["item"], "shown": item["shown"],
                                                    "choice": "b", "reason": "clearer"})
        assert status == 200 and ack["ok"] and ack["progress"]["judgements"] == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert judgements(folder / "labels.sqlite") == [("ann", item["item"], json.dumps(item["shown"]), "b", "clearer")]


def test_a_malformed_judgement_gets_a_4xx_and_changes_nothing(tmp_path):
    folder = write_sample_folder(tmp_path / "s")
    with label_server(folder) as (url, _):
        _, got = post(url + "/api/next", {"annotator": "ann"})
        item = got["item"]
        good = {"annotator": "ann", "item": item["item"], "shown": item["shown"], "choice": "a", "reason": ""}
        other = 1 + item["item"] % 12
        cases = [
            (400, {**good, "choice": "left"}),                       # not a choice
            (404, {**good, "item": 10_000}),                         # unknown item
            (409, {**good, "item": other}),                          # an item not assigned to ann
            (409, {**good, "shown": item["shown"][::-1]}),           # not the order ann was shown
            (400, {**good, "item": "1"}),                            # wrong types
            (400, {**good, "shown": "0,1"}),
            (400, {**good, "reason": 5}),
            (400, {**good, "reason": "x" * 2001}),                   # oversized reason
            (400, {**good, "annotator": ""}),
            (400, {**good, "ranking": [0, 1]}),                      # a ranking in pair mode
            (400, {**good, "extra": 1}),
            (400, [good]),                                           # not an object
        ]
        for status, body in cases:
            got_status, err = post(url + "/api/judgement", body)
            assert (got_status, "error" in err) == (status, True), (body, got_status, err)
        assert post(url + "/api/judgement", None, raw=b"{not json")[0] == 400
        assert post(url + "/api/judgement", None, raw=b" " * 20_000)[0] == 413
        assert judgements(folder / "labels.sqlite") == []
        _, again = post(url + "/api/next", {"annotator": "ann"})
        assert again["item"]["item"] == item["item"] and again["item"]["shown"] == item["shown"]  # still assigned
        assert post(url + "/api/judgement", good)[0] == 200


def test_two_annotators_never_hold_the_same_item_at_once(tmp_path):
    folder = write_sample_folder(tmp_path / "s")
    with label_server(folder, "--gold-rate", "0", "--repeat-rate", "0", "--votes", "2") as (url, _):
        held = [post(url + "/api/next", {"annotator": name})[1]["item"]["item"] for name in ("a", "b", "c")]
        assert len(set(held)) == 3


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser_page(url: str):
    """A Chromium page (Debian's, never a downloaded one) at the labeling page, with the annotator filled in."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.fill("#annotator", "kbd-user")
            page.press("#annotator", "Enter")
            page.wait_for_selector("#task:not([hidden])")
            yield page
        finally:
            browser.close()


def wait_for_judgements(page, n: int) -> None:
    """The progress line changes only once the next item is on screen, so keys pressed after it reach that item."""
    page.wait_for_function(f"document.getElementById('progress').textContent.includes('({n} judgements)')")


@pytest.mark.skipif(_chromium() is None, reason="no chromium on this machine")
def test_label_three_items_with_the_keyboard_in_a_real_browser(tmp_path):
    folder = write_sample_folder(tmp_path / "s")
    with label_server(folder, "--gold-rate", "0", "--repeat-rate", "0") as (url, _), browser_page(url) as page:
        assert "Progress: 0 / 12" in page.inner_text("#progress")
        shown = []
        for n, key in enumerate(["1", "2", "3"], 1):
            shown.append(page.inner_text("#responses"))
            page.keyboard.press(key)
            wait_for_judgements(page, n)
        assert "Progress: 3 / 12" in page.inner_text("#progress")
    rows = judgements(folder / "labels.sqlite")
    assert [(r[0], r[3]) for r in rows] == [("kbd-user", "a"), ("kbd-user", "b"), ("kbd-user", "tie")]
    assert len({r[1] for r in rows}) == 3 and all(s.strip() for s in shown)


@pytest.mark.skipif(_chromium() is None, reason="no chromium on this machine")
def test_rank_all_responses_with_the_keyboard(tmp_path):
    folder = write_sample_folder(tmp_path / "s")
    with label_server(folder, "--mode", "rank", "--repeat-rate", "0") as (url, _), browser_page(url) as page:
        assert page.locator(".resp").count() == 3  # all K responses of the prompt
        for key in ["3", "1", "2", "Enter"]:
            page.keyboard.press(key)
        wait_for_judgements(page, 1)
    with sqlite3.connect(folder / "labels.sqlite") as conn:
        ((shown, ranking, choice),) = conn.execute("SELECT shown, ranking, choice FROM judgements").fetchall()
    shown = json.loads(shown)
    assert choice == "rank" and json.loads(ranking) == [shown[2], shown[0], shown[1]]


def test_a_port_in_use_is_refused_in_one_line(tmp_path):
    from hostile import assert_refused, run_cli

    folder = write_sample_folder(tmp_path / "s")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert_refused(run_cli(["label", "--pairs", folder, "--port", busy.getsockname()[1]]), "--port")
    assert not (folder / "labels.sqlite").exists()  # refused before the store is opened
