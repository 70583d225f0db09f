"""The report of a tiny run in headless Chromium (Debian's system browser, driven by Playwright).

Needs /usr/bin/chromium (scripts/setup.sh installs it); without it these tests fail and say so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from report_run import EXPECTED_COUNTS, build_run, expected_images
from vebi.errors import VebiError
from vebi.report import build_report, collect_run
from vebi.report.browser import chromium, find_chromium

pytestmark = pytest.mark.browser

SCRIPT_NAME = "<script>alert(1)</script>"
IMG_NAME = "<img src=x onerror=alert(1)>"
FILE_NAME = "<img src=x onerror=alert(2)>.png"
SECTIONS = ("summary", "classes", "explanations", "evaluation", "eval-iou", "eval-scores", "eval-ablation")
BROKEN_IMAGES = "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
HANDLER_ATTRIBUTES = ("Array.from(document.querySelectorAll('*')).flatMap(e => Array.from(e.attributes))"
                      ".filter(a => a.name.startsWith('on')).map(a => a.name)")


@pytest.fixture(scope="module")
def browser():
    try:
        find_chromium()
    except VebiError as exc:
        pytest.fail(f"the browser tests need Chromium: {exc}")
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A complete tiny run whose class names and an image file name are HTML/JS payloads."""
    root = tmp_path_factory.mktemp("browser")
    run = build_run(root, class_dirs=(IMG_NAME, "<svg onload=alert(1)>", "plain"),
                    names=(SCRIPT_NAME, IMG_NAME, "plain & <b>bold</b>"), explained_name=FILE_NAME)
    return build_report(run, progress=False).path


def _open(browser, path: Path, events: dict[str, list[str]]):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("console", lambda m: m.type == "error" and events["console"].append(m.text))
    page.on("pageerror", lambda e: events["console"].append(str(e)))
    page.on("requestfailed", lambda r: events["failed"].append(r.url))
    page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
    page.goto(path.as_uri(), wait_until="load")
    return page


def test_report_loads_without_errors_or_missing_images(browser, report, tmp_path):
    events: dict[str, list[str]] = {"console": [], "failed": [], "dialogs": []}
    page = _open(browser, report, events)
    try:
        assert page.evaluate("document.images.length") == expected_images(collect_run(report.parent.parent))
        assert page.evaluate(BROKEN_IMAGES) == []
        for section in SECTIONS:
            assert page.locator(f"#{section}").is_visible(), section
        assert page.locator("#classes .feature").count() == sum(EXPECTED_COUNTS)
        # a tile opens its top crops; the close link hides them again
        assert not page.locator("#top-c0-f1").is_visible()
        page.locator("#card-c0-f1").click()
        assert page.locator("#top-c0-f1").is_visible()
        crop_row = page.locator("#top-c0-f1 .crop-row img")
        with Image.open(report.parent / crop_row.get_attribute("src")) as img:
            assert crop_row.evaluate("i => [i.naturalWidth, i.naturalHeight]") == list(img.size)
        assert crop_row.is_visible()
        page.locator("#top-c0-f1 .close").click()
        assert not page.locator("#top-c0-f1").is_visible()
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        with Image.open(shot) as img:
            assert img.size[0] == 1280 and img.size[1] > 800
        assert events == {"console": [], "failed": [], "dialogs": []}
    finally:
        page.close()


def test_user_text_shows_as_text_in_the_same_browser(browser, report):
    # control: the same browser does fire the dialog when the payload is not escaped
    control: dict[str, list[str]] = {"console": [], "failed": [], "dialogs": []}
    page = browser.new_page()
    page.on("dialog", lambda d: (control["dialogs"].append(d.message), d.dismiss()))
    page.set_content(f"<p>{IMG_NAME}</p><p>{SCRIPT_NAME}</p>")
    page.wait_for_timeout(200)
    page.close()
    assert control["dialogs"] == ["1", "1"]

    events: dict[str, list[str]] = {"console": [], "failed": [], "dialogs": []}
    page = _open(browser, report, events)
    try:
        page.wait_for_timeout(200)
        for text in (SCRIPT_NAME, IMG_NAME, f"{IMG_NAME}/{FILE_NAME}", "plain & <b>bold</b>"):
            assert page.get_by_text(text, exact=True).first.is_visible(), text
        assert page.evaluate("document.scripts.length") == 0
        assert page.evaluate("document.querySelectorAll('svg, b').length") == 0
        assert page.evaluate(HANDLER_ATTRIBUTES) == []
        assert events == {"console": [], "failed": [], "dialogs": []}
    finally:
        page.close()
