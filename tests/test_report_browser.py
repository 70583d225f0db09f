"""The report of a tiny run in headless Chromium (Debian's system browser, driven by Playwright).

Needs /usr/bin/chromium (scripts/setup.sh installs it); without it these tests fail and say so.
"""

from __future__ import annotations

import re
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


# [caption box, picture box] of every figure of the explanations and feature tiles, and of each
# feature row's text next to its pictures: pairs that must not overlap
BOXES = """() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const pairs = [];
  document.querySelectorAll('#explanations figure, .modal:target figure').forEach(f => {
    const cap = f.querySelector('figcaption'), pic = f.querySelector('img, .noimg');
    if (cap && pic) pairs.push([cap.textContent, box(cap), box(pic)]);
  });
  document.querySelectorAll('.feature-row').forEach(row => {
    const what = row.querySelector('.what');
    row.querySelectorAll('figure').forEach(f => pairs.push([what.textContent, box(what), box(f)]));
  });
  return pairs;
}"""
CLIPPED = ("Array.from(document.querySelectorAll('#explanations figcaption, #explanations .what, .verdict, "
           "#classes .meta')).filter(e => e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1)"
           ".map(e => e.textContent)")
NUMBER = r"-?\d+(?:\.\d+)?"


def _overlap(a, b) -> bool:
    return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5


def test_overlays_captions_tables_and_verdicts(browser, report):
    events: dict[str, list[str]] = {"console": [], "failed": [], "dialogs": []}
    page = _open(browser, report, events)
    try:
        data = collect_run(report.parent.parent)
        # every heatmap is blended over its image and links to the map alone, which loads
        overlays = page.locator("#explanations a.raw > img.overlay")
        assert overlays.count() == sum(1 + len(e.features) + sum(hasattr(p, "key") for _, p in e.baselines)
                                       for e in data.explanations) > 0
        assert page.evaluate("Array.from(document.querySelectorAll('a.raw')).filter(a => "
                             "!a.href.endsWith('.png') || !a.href.includes('_raw')).length") == 0
        assert page.evaluate("Array.from(document.querySelectorAll('img.overlay')).filter(i => "
                             "i.naturalWidth > 0 && i.getBoundingClientRect().width >= 100).length") == overlays.count()
        assert page.locator(".colorbar").is_visible()
        # the prediction and the true class side by side, the misclassification flagged
        for n, e in enumerate(data.explanations):
            labels = page.locator(f"#explanation-{n} .labels .label")
            pred, truth = labels.first.bounding_box(), labels.last.bounding_box()
            assert abs(pred["y"] - truth["y"]) < 1 and pred["x"] + pred["width"] <= truth["x"]
            assert labels.last.inner_text().split("\n")[-1] == (e.true_class or "unknown")
            assert page.locator(f"#explanation-{n} .flag.wrong").count() == (e.correct is False)
        # no caption or label overlaps its picture, none is cut off (also in an opened pop-up)
        for opened in (None, "#card-c0-f1"):
            if opened:
                page.locator(opened).click()
            pairs = page.evaluate(BOXES)
            assert len(pairs) >= sum(2 + 2 * len(e.features) for e in data.explanations)
            assert [text for text, a, b in pairs if _overlap(a, b)] == []
            assert page.evaluate(CLIPPED) == []
        page.locator("#top-c0-f1 .close").click()
        # tables: human headers, numbers of at most 3 significant digits, the best marked, sortable
        headers = page.locator("#evaluation table.data th").all_inner_texts()
        assert headers and not any("_" in h for h in headers)
        for cell in page.locator("#evaluation table.data td[data-value]").all_inner_texts():
            for number in re.findall(NUMBER, cell):
                assert len(number.lstrip("-0.").replace(".", "")) <= 3, cell
        iou = page.locator("#eval-iou table.data")
        assert iou.locator("td.best").count() >= 1
        header = iou.locator("th", has_text="IoU [95 % CI]")
        column = iou.locator("th").all_inner_texts().index(header.inner_text())
        values = f"Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[{column}].dataset.value))"
        header.click()
        down = iou.evaluate(f"t => {values}")
        assert down == sorted(down, reverse=True) and len(down) > 2
        header.click()
        assert iou.evaluate(f"t => {values}") == sorted(down)
        # the verdict is there and states the numbers of the table beside it
        verdict = page.locator("#eval-iou .verdict").inner_text()
        match = re.search(rf"vebi's mean IoU ({NUMBER}) is ahead of the best baseline \((\w+), ({NUMBER})\) "
                          rf"by ({NUMBER})", verdict)
        assert match, verdict
        rows = {r[0]: r[1].split(" [")[0] for r in (line.split("\t") for line in
                                                     iou.locator("tbody").inner_text().splitlines())}
        assert rows["vebi"] == match[1] and rows[match[2]] == match[3]
        assert float(match[4]) == pytest.approx(float(match[1]) - float(match[3]), abs=1e-3)
        assert page.locator("#eval-ablation .verdict").inner_text().startswith("What this shows: Ablating")
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
        assert page.evaluate("Array.from(document.scripts).map(s => s.src)") == [""]  # only the inline sorter
        assert page.evaluate("document.querySelectorAll('svg, b').length") == 0
        assert page.evaluate(HANDLER_ATTRIBUTES) == []
        assert events == {"console": [], "failed": [], "dialogs": []}
    finally:
        page.close()
