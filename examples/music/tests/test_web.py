"""The web page in headless Chromium: pick a listener, see recommendations, press play,
watch them change; the model panel shows the version in service and its metrics.

Needs Playwright's Python package and a Chromium binary (Debian's `chromium` at
/usr/bin/chromium; Playwright's own browser download is never used). Skipped, with the
reason, when either is missing.

`MUSIC_WEB_URL=http://…` runs it against a server already running (e.g. `music up`
with the reference data) instead of a small one started here, and
`MUSIC_SCREENSHOT=path.png` keeps the screenshot there (docs/screenshot.png is made so).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from music.app import build_app
from music.system import System

CHROMIUM = os.environ.get("MUSIC_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the web test needs Playwright: pip install playwright")
if not Path(CHROMIUM).is_file() and not shutil.which(CHROMIUM):
    pytest.skip(f"the web test needs Chromium at {CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def url(system: System) -> Iterator[str]:
    given = os.environ.get("MUSIC_WEB_URL")
    if given:
        yield given.rstrip("/")
        return
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(system), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)


def test_pick_a_listener_play_a_track_and_watch_the_recommendations_change(
        url: str, tmp_path: Path) -> None:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)

        page.wait_for_selector("#user-list .user-item")
        first = page.locator("#user-list .user-item").nth(1)
        user = first.get_attribute("data-user")
        first.click()
        page.wait_for_function("document.querySelectorAll('#recs .track').length === 10")
        assert page.locator("#user-name").inner_text() == user
        assert "model v" in page.locator("#answer-meta").inner_text()
        before = page.locator("#recs .track").evaluate_all(
            "rows => rows.map(r => r.dataset.track)")
        first_row = page.locator("#recs .track").first
        assert first_row.locator(".sub").inner_text().strip()  # artist and genre shown

        first_row.locator(".play").click()  # posts a listen to the events service
        played = before[0]
        try:
            page.wait_for_function(
                "t => document.querySelector('#history .track')?.dataset.track === t",
                arg=played)
            page.wait_for_function(
                "t => ![...document.querySelectorAll('#recs .track')].some(r => "
                "r.dataset.track === t)", arg=played)
        except playwright_api.TimeoutError:
            page.screenshot(path=str(tmp_path / "failed.png"))
            raise AssertionError(f"after playing {played}: toast "
                                 f"{page.locator('#toast').inner_text()!r}, history "
                                 f"{page.locator('#history').inner_text()[:300]!r}, "
                                 f"errors {errors}") from None
        after = page.locator("#recs .track").evaluate_all(
            "rows => rows.map(r => r.dataset.track)")
        assert after != before and played not in after
        page.wait_for_selector("#rec-note:has-text('updated')")

        page.wait_for_selector("#model-body .version")
        panel = page.locator("#model-panel").inner_text()
        assert "recall@10" in panel and "v1" in panel
        assert "top 10 in favourite genre" in panel  # the taste check, from the registry
        assert "music-recommender v" in page.locator("#model-badge").inner_text()
        page.wait_for_timeout(300)
        shot = Path(os.environ.get("MUSIC_SCREENSHOT") or tmp_path / "screenshot.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=False)
        browser.close()
    assert not errors, f"JavaScript errors: {errors}"


def test_a_new_listener_is_listed_with_their_play_after_playing(url: str) -> None:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector("#user-list .user-item")
        page.fill("#user-search", "first-timer")
        page.wait_for_selector("#user-list .user-item.new[data-user='first-timer']")
        page.press("#user-search", "Enter")
        page.wait_for_function("document.querySelectorAll('#recs .track').length === 10")
        assert page.locator("#user-meta").inner_text() == "new listener: no history yet"
        genre = page.locator("#recs .track .genre-chip").first.inner_text()
        page.locator("#recs .track .play").first.click()
        # the list said "new · no history yet" after the play: now it lists the listener
        # with their play, and the header says what they play
        item = page.locator("#user-list .user-item[data-user='first-timer']")
        page.wait_for_selector("#user-list .user-item[data-user='first-timer']:not(.new)")
        assert item.locator(".chip").inner_text() == "1 play"
        assert item.locator(".genre").inner_text() == genre
        page.wait_for_function("document.querySelector('#user-meta').textContent"
                               ".includes('1 play')")
        assert page.locator("#user-meta").inner_text() == f"mostly {genre} · 1 play"
        browser.close()
    assert not errors, f"JavaScript errors: {errors}"
