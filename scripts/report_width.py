"""Does a report page fit a browser window? Measured in headless Chromium, with an optional screenshot.

    python scripts/report_width.py runs/tiny/report/index.html [--width 1400] [--screenshot shot.png]

The report page has no scripts (reports/html.py), so this measures a copy with one appended: after
load it writes the page's ``scrollWidth`` and every table or scroll box wider than its box into the DOM,
which ``--dump-dom`` prints. Exit 1 when the page scrolls sideways at ``--width`` or a box inside it
does (a scroll bar of its own); 2 when Chromium is missing. Nothing is fetched: the page is
self-contained and the browser runs with networking features off.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_MEASURE = """<script>
function section(e) {  // the title of the h2 above a box
  for (let x = e; x; x = x.previousElementSibling || x.parentElement) {
    if (x.tagName === "H2") return x.textContent;
  }
  return "";
}
window.addEventListener("load", () => {
  const d = document.documentElement;
  const boxes = [...document.querySelectorAll(".scroll, table")]
    .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
    .map(e => ({tag: e.tagName, cls: e.className, scrollWidth: e.scrollWidth, clientWidth: e.clientWidth,
                section: section(e)}));
  const out = document.createElement("pre");
  out.id = "width-measure";
  out.textContent = JSON.stringify({scrollWidth: d.scrollWidth, clientWidth: d.clientWidth, overflowing: boxes});
  document.body.appendChild(out);
});
</script>"""
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--no-first-run"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    sys.exit("report_width: no Chromium on PATH; install it (e.g. `apt-get install -y chromium`) and rerun")


def measure(page: Path, width: int, height: int = 1000, screenshot: Path | None = None) -> dict:
    """{"scrollWidth", "clientWidth", "overflowing": [boxes wider than their box]} of ``page`` at ``width``."""
    browser = _chromium()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "measured.html"
        copy.write_text(page.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
        flags = [*_FLAGS, f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}"]
        dom = subprocess.run([browser, *flags, "--dump-dom", copy.as_uri()], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        if screenshot is not None:  # of the page itself, not of the measured copy
            subprocess.run([browser, *flags, f"--screenshot={screenshot.resolve()}", page.resolve().as_uri()],
                           capture_output=True, timeout=120, check=True)
    match = re.search(r'<pre id="width-measure">(.*?)</pre>', dom, flags=re.S)
    if match is None:
        raise RuntimeError("report_width: the measuring script wrote nothing (did the page load?)")
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="a report's index.html")
    parser.add_argument("--width", type=int, default=1400, help="window width in CSS pixels (default 1400)")
    parser.add_argument("--screenshot", type=Path, help="also write a PNG of the page's first screen here")
    args = parser.parse_args()
    if not args.page.is_file():
        sys.exit(f"report_width: no such page: {args.page} (render one with `harness report RUN_DIR`)")
    result = measure(args.page, args.width, screenshot=args.screenshot)
    print(json.dumps(result, indent=1))
    fits = result["scrollWidth"] <= min(args.width, result["clientWidth"]) and not result["overflowing"]
    print(f"{'fits' if fits else 'does NOT fit'}: page scrollWidth {result['scrollWidth']} px at a "
          f"{args.width} px window; {len(result['overflowing'])} box(es) wider than their box")
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
