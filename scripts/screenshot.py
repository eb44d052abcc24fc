"""Screenshots of the dashboard for the README: `python scripts/screenshot.py http://127.0.0.1:8000 JOB_ID`."""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main(base: str, job: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        for name, path in [
            ("dashboard-overview", "/"),
            ("dashboard-failed", "/failed"),
            ("dashboard-job", f"/jobs/{job}"),
        ]:
            page.goto(base + path)
            page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
