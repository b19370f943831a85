"""The console in a real browser: Debian's chromium driven by Playwright (never a browser Playwright
downloads), and the console (`cascade ui`'s Streamlit server) serving the test stack.

Each test's page is screenshotted into ARTIFACTS (test-artifacts/console/ at the repo root, or
$CASCADE_TEST_ARTIFACTS/console) when it ends, pass or fail, so the pages can be looked at.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CASCADE_TEST_ARTIFACTS", REPO / "test-artifacts")) / "console"
CONSOLE_PORT = 29501


def chromium_executable() -> str | None:
    """Debian's chromium, or $CASCADE_CHROMIUM."""
    for candidate in (os.environ.get("CASCADE_CHROMIUM", ""), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def require_chromium() -> str:
    """The browser, or a loud skip saying how to get it (`make test` installs it when run as root)."""
    found = chromium_executable()
    if found is None:
        reason = (
            "BROWSER TESTS SKIPPED: no chromium executable (Debian: apt-get install chromium; "
            "`make test` installs it when run as root, or set CASCADE_CHROMIUM)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI runs as root and installs it: a missing browser there is a bug
        pytest.skip(reason)
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class Console:
    """A running console server; `url(page)` is the address of one of its pages."""

    def __init__(self, home: Path, port: int = CONSOLE_PORT, extra_env: dict[str, str] | None = None) -> None:
        from cascade.cli.console import console_command, console_env

        self.port = port
        self.log = home / "logs" / f"console-{port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = console_env(home) | {"CASCADE_CONSOLE_REFRESH_SECONDS": "1"} | (extra_env or {})
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                console_command("127.0.0.1", port, home),
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not _port_open(port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the console did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def url(self, page: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{page}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# Per module, not per session: sync Playwright runs its event loop on the main thread while it is
# open, and a later test's asyncio.run() (or pytest-asyncio's loop) would find that loop running.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: object, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser page; its screenshot is written to ARTIFACTS/<test name>.png at the end."""
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    yield opened
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    finally:
        context.close()
