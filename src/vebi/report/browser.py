"""Opening a report in headless Chromium (Debian's system ``chromium``) through Playwright.

Used by the browser tests and ``scripts/screenshot_report.py``; Playwright is imported only here,
and its own browser downloads are never used (``executable_path`` is the system browser).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vebi.errors import VebiError

__all__ = ["CHROMIUM_ARGS", "chromium", "find_chromium", "screenshot"]

CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


def find_chromium() -> str:
    """$VEBI_CHROMIUM, else /usr/bin/chromium, else ``chromium`` on PATH; VebiError when none exists."""
    for candidate in (os.environ.get("VEBI_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise VebiError("Chromium not found: install Debian's chromium (scripts/setup.sh does, as root: "
                    "apt-get install -y chromium) or set VEBI_CHROMIUM to its path")


@contextlib.contextmanager
def chromium(executable: str | None = None) -> Iterator[Any]:
    """A headless Chromium ``playwright.sync_api.Browser``, closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise VebiError("the Python package playwright is needed to drive Chromium (pip install playwright)") from None
    path = executable or find_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=list(CHROMIUM_ARGS), headless=True)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page_path: str | Path, out: str | Path, *, width: int = 1280, height: int = 800,
               full_page: bool = False) -> Path:
    """Save a PNG of the HTML file ``page_path`` as Chromium shows it (viewport ``width`` x ``height``)."""
    from vebi.io.atomic import atomic_path

    page_file = Path(page_path).resolve()
    if not page_file.is_file():
        raise VebiError(f"{page_file} not found")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(page_file.as_uri(), wait_until="load")
        with atomic_path(out) as tmp:
            page.screenshot(path=str(tmp), full_page=full_page, type="png")
    return Path(out)
