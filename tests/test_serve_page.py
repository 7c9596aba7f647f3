"""The chat page in a real headless browser (Debian's chromium, driven by playwright).

Run as a script to make the screenshot kept in bench/ with real models, e.g.::

    python tests/test_serve_page.py --screenshot bench/serve-screenshot.png \\
        base=smollm2-135m-instruct sft=runs/demo/sft
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("LANGADAPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def ask(page, text: str, *, timeout_ms: int = 30_000) -> list:
    """Type ``text`` into the chat box, send it, wait until every answer of the turn is complete."""
    page.fill("#prompt", text)
    page.click("#send")
    turn = page.locator(".turn").last
    turn.locator(".assistant .msg[data-done='1']").first.wait_for(timeout=timeout_ms)
    answers = turn.locator(".assistant .msg")
    page.wait_for_function("n => document.querySelectorAll('.turn:last-child .assistant .msg[data-done=\"1\"]').length == n",
                           arg=answers.count(), timeout=timeout_ms)
    return [answers.nth(i) for i in range(answers.count())]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium is not installed ({CHROMIUM}); apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    from test_serve import save_tiny_model, start_server

    from langadapt.serve.generation import ChatModel, Sampling

    folder = save_tiny_model(tmp_path_factory.mktemp("page") / "model")
    models = {"tiny-a": ChatModel.load(str(folder), name="tiny-a"), "tiny-b": ChatModel.load(str(folder), name="tiny-b")}
    srv = start_server(models, sampling=Sampling(max_new_tokens=12))
    yield srv
    srv.shutdown()
    srv.server_close()


def test_page_streams_an_answer_and_sets_direction_per_message(browser, page_server, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"http://127.0.0.1:{page_server.server_port}/")
    page.wait_for_function("document.querySelectorAll('#model-a option').length == 2")

    fa = ask(page, "سلام، حال شما چطور است؟")
    assert len(fa) == 1
    user = page.locator(".turn").last.locator(".user .msg")
    assert user.get_attribute("dir") == "rtl"
    assert fa[0].inner_text().strip(), "the answer should not be empty"
    assert fa[0].get_attribute("dir") in ("rtl", "ltr")

    ask(page, "Tell me a short story about a cat.")
    assert page.locator(".turn").last.locator(".user .msg").get_attribute("dir") == "ltr"
    # The page sent the whole conversation the second time: two user turns and the first answer.
    # (The page is self-contained: it loaded nothing from anywhere but this server.)
    assert all(u.startswith(f"http://127.0.0.1:{page_server.server_port}/") for u in requests)
    page.screenshot(path=str(tmp_path / "single.png"))
    assert (tmp_path / "single.png").stat().st_size > 5000
    page.close()


def test_page_compares_two_models_side_by_side(browser, page_server):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.method == "POST" else None)
    page.goto(f"http://127.0.0.1:{page_server.server_port}/")
    page.wait_for_function("document.querySelectorAll('#model-b option').length == 2")
    page.check("#compare")
    answers = ask(page, "یک داستان کوتاه درباره‌ی گربه بگو.")
    assert len(answers) == 2
    labels = page.locator(".turn").last.locator(".assistant .who span:first-child").all_inner_texts()
    assert labels == ["tiny-a", "tiny-b"]
    assert [b["model"] for b in bodies] == ["tiny-a", "tiny-b"]
    assert all(b["stream"] and b["messages"][-1]["content"].startswith("یک داستان") for b in bodies)
    page.close()


def test_page_asks_for_the_api_key_of_a_server_that_has_one(browser, tmp_path):
    from test_serve import save_tiny_model, start_server

    from langadapt.serve.generation import ChatModel, Sampling

    folder = save_tiny_model(tmp_path / "model")
    server = start_server({"tiny": ChatModel.load(str(folder), name="tiny")}, sampling=Sampling(max_new_tokens=6),
                          api_key="page-key-123")
    try:
        page = browser.new_page()
        sent = []
        page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
        page.goto(server.url)
        page.locator("#keyform").wait_for(state="visible")
        assert "API key" in page.inner_text("#status")
        page.fill("#apikey", "wrong")
        page.click("#keyform button")
        page.wait_for_function("document.querySelector('#status').textContent.includes('refused')")
        page.fill("#apikey", "page-key-123")
        page.click("#keyform button")
        page.wait_for_function("document.querySelectorAll('#model-a option').length == 1")
        assert page.locator("#keyform").is_hidden()
        answers = ask(page, "Hello, how are you today?")
        assert answers[0].get_attribute("class") == "msg" and answers[0].inner_text().strip()
        # The key went only to this server, in the header, never in a URL.
        assert all(u.startswith(server.url) and "page-key-123" not in u for u, _ in sent)
        assert "Bearer page-key-123" in [a for _, a in sent]
        page.close()
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str]) -> int:
    """Serve MODELs, ask the page a Persian and an English question (compare mode if two models), screenshot it."""
    import argparse
    import threading

    sys.path.insert(0, str(Path(__file__).parent))
    from playwright.sync_api import sync_playwright

    from langadapt.serve.generation import ChatModel, Sampling
    from langadapt.serve.server import make_server
    from langadapt.serve.source import resolve_ref

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("models", nargs="+", help="MODEL or NAME=MODEL, as for langadapt serve")
    ap.add_argument("--screenshot", default="bench/serve-screenshot.png")
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--prompt", action="append", help="prompts to send (default: one Persian, one English)")
    args = ap.parse_args(argv)
    models = {}
    for item in args.models:
        name, eq, spec = item.partition("=")
        if not eq:
            name, spec = resolve_ref(item).name, item
        models[name] = ChatModel.load(spec, name=name)
    server = make_server(models, port=0, sampling=Sampling(max_new_tokens=args.max_new_tokens, seed=0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prompts = args.prompt or ["یک جمله درباره‌ی تهران بنویس.", "Write one sentence about Tehran."]
    with sync_playwright() as p:
        b = launch(p)
        page = b.new_page(viewport={"width": 1200, "height": 820})
        page.goto(server.url)
        page.wait_for_function(f"document.querySelectorAll('#model-a option').length == {len(models)}")
        if len(models) > 1:
            page.check("#compare")
        for text in prompts:
            ask(page, text, timeout_ms=600_000)
        page.screenshot(path=args.screenshot)
        b.close()
    server.shutdown()
    print(f"wrote {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
