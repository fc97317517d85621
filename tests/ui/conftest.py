"""The standalone app in a real server process and Debian's Chromium driven by Playwright (never `playwright
install`). Screenshots go to $SDTRAIN_ARTIFACTS (default tests/artifacts/ui), kept as test artifacts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SDTRAIN_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("SDTRAIN_ARTIFACTS", ROOT / "tests" / "artifacts" / "ui"))
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-quic",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    def __init__(self, url: str, home: Path) -> None:
        self.url, self.home = url, home

    def api(self, method: str, path: str, body: dict | None = None) -> dict | list:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def run_job(self, kind: str, options: dict, timeout: float = 180) -> dict:
        job = self.api("POST", "/sdtrain/v1/jobs", {"kind": kind, "options": options})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.api("GET", f"/sdtrain/v1/jobs/{job['id']}")
            if job["status"] != "running":
                assert job["status"] == "done", job["error"]
                return job
            time.sleep(0.2)
        raise AssertionError(f"{kind} did not finish")


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("sdtrain-home")
    port = _free_port()
    # One torch thread: next to Chromium on two cores, OpenMP's spinning threads slow tiny models down tenfold.
    env = {**os.environ, "SDTRAIN_HOME": str(home), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    log = open(home / "server.log", "w")  # noqa: SIM115 (open for the server's lifetime)
    server = subprocess.Popen(
        [sys.executable, "-m", "lib_sdtrain", "ui", "--port", str(port), "--api"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if "SD-Train is at" in (home / "server.log").read_text():
            break
        if server.poll() is not None:
            raise AssertionError("the app did not start:\n" + (home / "server.log").read_text())
        time.sleep(0.3)
    else:
        raise AssertionError("the app did not start in time:\n" + (home / "server.log").read_text())
    yield App(url, home)
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()
    shutil.copy(home / "server.log", ARTIFACTS / "server.log") if ARTIFACTS.is_dir() else None


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when == "call":
        item.call_failed = outcome.get_result().failed


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    if getattr(request.node, "call_failed", False):  # what the page showed when the test failed
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name.removeprefix('test_')}-FAILED.png"), full_page=True)
    context.close()


@pytest.fixture
def shot(request):
    """shot(page, "name"): a full-page screenshot in the artifacts folder, numbered in the order taken."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1, 100))
    prefix = request.node.name.removeprefix("test_")

    def take(page, name: str) -> Path:
        page.wait_for_timeout(400)  # Gradio 3 fades an output in for a moment after its value arrives
        path = ARTIFACTS / f"{prefix}-{next(counter):02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
