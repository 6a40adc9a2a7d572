"""The README's picture of `resnets app`: the page for a trained run, photos uploaded by a headless Chromium (Debian's
package, driven by Playwright), the top classes it shows read back and checked against `resnets predict`.

    python scripts/app_screenshot.py RUN_DIR|MODEL_FILE PHOTO... [--out docs/app.png]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("photos", nargs="+")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "app.png")
    a = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from resnets.app import serve
    from resnets.deploy import load

    browser_path = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if browser_path is None:
        sys.exit("no Chromium: apt-get install chromium")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = serve(a.model, port=port, block=False)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("input[type=file]").first.set_input_files(a.photos)
            page.get_by_role("button", name="Predict").click()
            results = page.locator("#resnets-results .resnets-result")
            results.nth(len(a.photos) - 1).wait_for(timeout=120_000)
            shown = [results.nth(i).locator(".resnets-label").first.inner_text() for i in range(len(a.photos))]
            a.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(a.out), full_page=True)
            browser.close()
    finally:
        demo.close()
    predictor = load(demo.model_file)
    expected = [predictor.predict(f)[0][1] for f in a.photos]
    print(f"saved {a.out}; the page's top classes {shown}, resnets predict's {expected}")
    if shown != expected:
        sys.exit("the page's top classes are not resnets predict's")


if __name__ == "__main__":
    main()
