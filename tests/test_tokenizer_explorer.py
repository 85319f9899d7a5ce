"""The saved tokenizer explorer, opened in a real browser: the page shows every token on its own background.

A page can be well-formed HTML and still show nothing (it once held an empty `<code>`: the recording was cleared
before the page was written), so the test looks at what Chromium renders, not at the markup. Playwright drives
Debian's Chromium (`apt-get install chromium`, done by `make setup`); the test skips, saying so, only where no
Chromium binary is found.
"""

from __future__ import annotations

import shutil

import pytest

from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.show import save_explorer, token_views

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Short and on one line, so no token is wrapped into two pieces: each coloured element is then one token.
SAMPLE = "The explorer colours 12345 tokens: def f(x): return x"


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(f"no Chromium binary found (looked for {', '.join(CHROMIUM_NAMES)}); `make setup` installs it")
    return path


def test_explorer_page_shows_coloured_tokens(tmp_path, chromium):
    from playwright.sync_api import sync_playwright

    tok = Tokenizer.train(["The quick brown fox explores tokens. def f(x): return x + 12345\n"] * 20, 300)
    stats = save_explorer(tok, SAMPLE, tmp_path)
    expected = [v.text for v in token_views(tok, tok.encode(SAMPLE))]
    assert stats["tokens"] == len(expected) > 5

    with sync_playwright() as pw:
        # --no-sandbox: Chromium's own sandbox needs user namespaces that containers and root sessions lack
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto((tmp_path / "explorer.html").as_uri())
            coloured = page.evaluate("""() => [...document.querySelectorAll('body *')]
                .filter(e => e.children.length === 0 && e.getBoundingClientRect().width > 0)
                .filter(e => getComputedStyle(e).backgroundColor !== 'rgba(0, 0, 0, 0)')
                .map(e => e.textContent)""")
        finally:
            browser.close()
    assert coloured == expected
    assert "bytes/token" in (tmp_path / "explorer.txt").read_text(encoding="utf-8")
