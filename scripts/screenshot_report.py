"""Screenshot of a run's HTML report in headless Chromium, e.g. for the README.

    .venv/bin/python scripts/screenshot_report.py RUN docs/report.png [--width 1280] [--height 800]
        [--full-page] [--anchor classes] [--element "#explanation-0"]

The report is built into a temporary folder (the run folder is not changed) and opened from
disk in Debian's chromium (/usr/bin/chromium) through Playwright; ``--anchor`` scrolls to a
section (summary, classes, explanations, evaluation) first; ``--element`` shoots only the first
element a CSS selector finds (e.g. one explanation, ``#eval-iou``), whatever its height.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from vebi.io.atomic import atomic_path
from vebi.errors import VebiError
from vebi.report import build_report
from vebi.report.browser import chromium


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--full-page", action="store_true")
    parser.add_argument("--anchor", default=None, help="id of the section to scroll to")
    parser.add_argument("--element", default=None, help="CSS selector of the one element to shoot")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = build_report(args.run, Path(tmp) / "index.html", progress=False)
            with chromium() as browser:
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                page.goto(report.path.as_uri(), wait_until="load")
                if args.anchor:  # jump, not the page's smooth scrolling, which a screenshot catches half-way
                    found = page.evaluate("id => { const e = document.getElementById(id); "
                                          "if (e) e.scrollIntoView({behavior: 'instant'}); return !!e; }", args.anchor)
                    if not found:
                        raise VebiError(f"the report has no section with id {args.anchor!r}")
                with atomic_path(args.out) as shot:
                    if args.element:
                        page.add_style_tag(content="header.top { position: static; }")  # not over the element
                        found = page.locator(args.element)
                        if not found.count():
                            raise VebiError(f"the report has no element {args.element!r}")
                        found.first.screenshot(path=str(shot), type="png")
                    else:
                        page.screenshot(path=str(shot), full_page=args.full_page, type="png")
    except VebiError as exc:
        print(f"screenshot_report: error: {exc}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
