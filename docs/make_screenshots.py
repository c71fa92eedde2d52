"""Regenerate the README's pictures from what the commands produce.

    python docs/make_screenshots.py                     # runs `fedgckd demo` in a scratch folder first
    python docs/make_screenshots.py --demo demo         # uses an existing demo folder
    python docs/make_screenshots.py --contact-sheet data/embedded   # also redraw the contact sheet

- docs/audit_screenshot.png: the demo's privacy report (DEMO/federated/audit.html)
  rendered by headless Chromium, the way tests/test_audit_html.py renders it.
- docs/contact_sheet.png (only with --contact-sheet DIR): `fedgckd data preview DIR`
  of a `default`-profile benchmark (`fedgckd data synth --out DIR`).

Needs Chromium (Debian/Ubuntu: apt-get install -y chromium). Chromium runs in
its own process group with a time limit and is killed by its PID if it overruns.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
WINDOW = (1200, 2400)  # the page's width as a laptop shows it; tall enough for the plot and every site's row
TIMEOUT_S = 120


def fedgckd(*args) -> None:
    cmd = [sys.executable, "-m", "fedgckd", *map(str, args)]
    print("+ fedgckd " + " ".join(map(str, args)), flush=True)
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}")


def render(html: Path, png: Path, scratch: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not installed (Debian/Ubuntu: apt-get install -y chromium)")
    proc = subprocess.Popen([browser, *FLAGS, f"--user-data-dir={scratch / 'profile'}", f"--screenshot={png.resolve()}",
                             f"--window-size={WINDOW[0]},{WINDOW[1]}", html.resolve().as_uri()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this Popen created
        proc.communicate()
        sys.exit(f"chromium did not finish within {TIMEOUT_S}s")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helpers that outlived the browser
        except ProcessLookupError:
            pass
    if proc.returncode != 0 or not png.exists():
        sys.exit(f"chromium failed to render {html}: {err[-2000:]}")
    print(f"wrote {png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, help="an existing `fedgckd demo --out DIR` folder (default: run the demo)")
    ap.add_argument("--contact-sheet", type=Path, help="a default-profile benchmark folder to draw the contact sheet from")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedgckd-shots-") as tmp:
        scratch = Path(tmp)
        demo = args.demo
        if demo is None:
            demo = scratch / "demo"
            fedgckd("demo", "--out", demo)
        html = demo / "federated" / "audit.html"
        if not html.exists():
            sys.exit(f"{html} is missing: is {demo} a `fedgckd demo` folder?")
        render(html, args.out / "audit_screenshot.png", scratch)
        if args.contact_sheet is not None:
            fedgckd("data", "preview", args.contact_sheet, "--out", args.out / "contact_sheet.png")


if __name__ == "__main__":
    main()
