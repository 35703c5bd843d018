"""/docs in headless Chromium: it renders every model's operation from the assets the
package ships, and the page asks no host but the server.

Needs Playwright's Python package (the dev tools) and Debian's Chromium at
/usr/bin/chromium (`.ci/run` installs it); skipped, with the reason, without them.
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
import uvicorn
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

from modelport import ModelConfig, Registry, Service, ServiceConfig, Settings
from modelport.server import create_app

CHROMIUM = os.environ.get("MODELPORT_TEST_CHROMIUM", "/usr/bin/chromium")
# no background traffic of the browser's own: only the page's requests are seen
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the docs page test needs Playwright (the dev tools)")
if not Path(CHROMIUM).is_file() and not shutil.which(CHROMIUM):
    pytest.skip(f"the docs page test needs Chromium at {CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)


@pytest.fixture
def url(settings: Settings) -> Iterator[str]:
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    registry = Registry(settings=settings)
    registry.register("cancer", LogisticRegression(max_iter=5000).fit(X, y),
                      sample_input=X[:3])
    app = create_app(Service(settings, ServiceConfig(models=[ModelConfig(ref="cancer:1")]),
                             registry))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
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
    registry.close()


def test_the_docs_render_offline_from_the_server_alone(url: str) -> None:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        asked: list[str] = []
        errors: list[str] = []
        page.on("request", lambda request: asked.append(request.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/docs")
        page.wait_for_selector(".opblock-summary-path[data-path='/models/cancer/predict']",
                               timeout=30_000)
        browser.close()
    assert errors == []
    assert asked and all(u.startswith(url + "/") for u in asked), asked
    assert f"{url}/openapi.json" in asked
