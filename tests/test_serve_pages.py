"""The pages of `lmforge serve` in a real browser: Playwright driving Debian's Chromium (never `playwright install`).

Each test loads a page from the server, types as a user would, and checks what appears against the engine's
greedy answer or the tokenizer's own ids. Skipped only where no Chromium (or no playwright) is installed.
"""

from __future__ import annotations

import shutil

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium on PATH (apt-get install chromium)", allow_module_level=True)

from test_serve import KEY, Served, chat_reference, reference_completion, tiny_model  # noqa: E402

from lmforge.inference.engine import Engine  # noqa: E402
from lmforge.serve.protocol import Limits  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def served():
    s = Served(Engine(tiny_model(), Tokenizer([])), slots=4, limits=Limits())
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, served, name: str):
    page = browser.new_page()
    page.goto(f"{served.server.url}/{name}")  # "" is / (it leads to the chat page)
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    return page


def text_of(page, selector: str) -> str:
    return page.eval_on_selector(selector, "e => e.textContent")


def test_chat_page_streams_an_answer_and_keeps_the_conversation(browser, served):
    page = open_page(browser, served, "")
    for field, value in (("#temperature", "0"), ("#max-tokens", "12")):
        page.fill(field, value)
        page.dispatch_event(field, "change")
    page.fill("#message", "Hello there")
    page.evaluate("""() => { window.pieces = 0; new MutationObserver((records) => { window.pieces += records.filter(
        (r) => r.target.classList && r.target.classList.contains('assistant')).length; })
        .observe(document.getElementById('messages'), { childList: true, subtree: true }); }""")
    page.click("#send")  # the click handler disables Send and enables Stop before the first await
    page.wait_for_selector("#stop[disabled]", timeout=30000)  # done
    want = chat_reference(served.engine, [{"role": "user", "content": "Hello there"}], 12)
    assert text_of(page, ".msg.user") == "Hello there"
    assert text_of(page, ".msg.assistant:last-child") == want
    assert page.evaluate("window.pieces") >= 2  # the answer arrived in pieces (streamed), not at once
    page.reload()  # the conversation lives in localStorage
    page.wait_for_selector(".msg.assistant")
    assert text_of(page, ".msg.assistant:last-child") == want and text_of(page, "#conversations .here") == "Hello there"
    page.click("#regenerate")  # greedy: the same answer again, replacing the old one
    page.wait_for_selector("#stop[disabled]", timeout=30000)
    assert page.locator(".msg.assistant").count() == 1 and text_of(page, ".msg.assistant") == want
    page.close()


def test_tokenizer_page_shows_each_token_with_its_id(browser, served):
    page = open_page(browser, served, "pages/tokenizer.html")
    text = "héllo 日本 wörld"
    ids = served.engine.tokenizer.encode(text)
    page.fill("#text", text)
    page.wait_for_function(f"document.getElementById('count').textContent === '{len(ids)}'")
    assert [int(i) for i in page.eval_on_selector_all(".tok", "es => es.map(e => e.dataset.id)")] == ids
    assert text_of(page, "#bytes") == str(len(text.encode()))
    page.close()


def test_next_token_page_steps_through_the_candidates(browser, served):
    page = open_page(browser, served, "pages/next.html")
    page.fill("#prompt", "abc")
    page.fill("#temperature", "0")
    page.click("#start")
    page.wait_for_selector(".cand")
    greedy = reference_completion(served.engine, "abc", 2, stop_token_ids=[]).token_ids
    assert page.locator(".cand").count() == 10
    assert int(page.get_attribute(".cand >> nth=0", "data-id")) == greedy[0]
    assert int(page.get_attribute(".cand.sampled", "data-id")) == greedy[0]  # greedy draws the top candidate
    page.click(".cand >> nth=0")
    page.wait_for_function("document.getElementById('steps').textContent.startsWith('1 ')")
    page.wait_for_selector(f".cand.sampled[data-id='{greedy[1]}']")
    page.click("#sample")
    page.wait_for_function("document.getElementById('steps').textContent.startsWith('2 ')")
    assert text_of(page, "#text .gen") == served.engine.tokenizer.decode(greedy)
    page.close()


def test_chat_page_shows_a_server_tool_call_and_its_result(browser):
    """With `serve --tools calculator`, the call and its output appear in the answer as they stream, between the
    answer's text, and stay after a reload."""
    from test_serve_tools import QUESTION, scripted_answer, served_with_tools

    from lmforge.inference.tools import default_tools

    tok = Tokenizer([])
    full = scripted_answer(tok, QUESTION, "Let me compute.", ("calculator", "2+3"), "5", " It is 5.")
    served = served_with_tools(tok, full, {"calculator": default_tools()["calculator"]})
    try:
        page = open_page(browser, served, "")
        for field, value in (("#temperature", "0"), ("#max-tokens", "100")):
            page.fill(field, value)
            page.dispatch_event(field, "change")
        page.fill("#message", QUESTION[0]["content"])
        page.click("#send")
        page.wait_for_selector(".msg.assistant .tool.result", timeout=30000)
        page.wait_for_selector("#stop[disabled]", timeout=30000)
        assert text_of(page, ".msg.assistant .tool.call") == "[calculator] 2+3"
        assert text_of(page, ".msg.assistant .tool.result") == "[calculator output] 5"
        assert text_of(page, ".msg.assistant") == "Let me compute.[calculator] 2+3[calculator output] 5 It is 5."
        page.reload()
        page.wait_for_selector(".msg.assistant .tool.result")
        assert text_of(page, ".msg.assistant .tool.result") == "[calculator output] 5"
        page.close()
    finally:
        served.close()
