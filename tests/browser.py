"""A real headless browser (Debian's chromium) for the tests that check what a user sees in a web UI."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._hidden += tag in ("script", "style", "noscript")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("script", "style", "noscript") and self._hidden > 0

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.parts.append(data.strip())


def rendered_text(url: str, budget_ms: int = 20_000) -> str:
    """The page's visible text after its scripts ran, in a fresh profile (no view remembered from before)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: scripts/install.sh installs Debian's chromium")
    with tempfile.TemporaryDirectory() as profile:
        # --no-sandbox: the tests run as root, where chromium's sandbox refuses to start.
        done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                               f"--user-data-dir={profile}",
                               f"--virtual-time-budget={budget_ms}", "--window-size=1400,1000", "--dump-dom",
                               url],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout, done.stderr[-2000:]
    parser = _VisibleText()
    parser.feed(done.stdout)
    return " ".join(parser.parts)
