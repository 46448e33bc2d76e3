"""Screenshots of the built site, to look at it as a reader would: ``python docs/screenshots.py
[OUT]`` builds the site (``mkdocs build --strict``) into a temporary directory, serves it on a free
local port and has headless Chromium photograph a few pages into OUT (default
``/tmp/hardened-worker-docs-screenshots``), one PNG per page, desktop width and a phone's.

Needs ``chromium`` (Debian: ``apt-get install chromium``); not run by the test suite, whose
machines need not have a browser. Nothing is compared: the pictures are for a person to look at
(tables wider than the page, a missing plot, a broken navigation).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (file name, page, window size): the home page, a generated table, the log catalogue, the
# benchmark report down to its plots (a tall window: a URL's #fragment photographs blank), the
# deployments, a phone
SHOTS = [
    ("index", "", "1366,1000"),
    ("settings", "settings/", "1366,2800"),
    ("how-it-works", "how-it-works/", "1366,1400"),
    ("troubleshooting", "troubleshooting/", "1366,1000"),
    ("benchmarks", "benchmarks/", "1366,9000"),
    ("deployments", "deployments/", "1366,1000"),
    ("getting-started-phone", "getting-started/", "412,915"),
]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no chromium on PATH: apt-get install chromium")


TIMEOUT = 120


def shoot(chromium: str, url: str, size: str, png: Path) -> bool:
    """One screenshot; False if Chromium did not finish in time (its process group is killed)."""
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                "--virtual-time-budget=3000",
                f"--screenshot={png}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            return browser.wait(timeout=TIMEOUT) == 0
        except subprocess.TimeoutExpired:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()
            return False


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "/tmp/hardened-worker-docs-screenshots").resolve()
    out.mkdir(parents=True, exist_ok=True)
    chromium = browser()
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mkdocs",
                "build",
                "--strict",
                "-q",
                "-f",
                str(ROOT / "mkdocs.yml"),
                "-d",
                str(site),
            ],
            check=True,
            cwd=ROOT,
            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        )
        handler = functools.partial(Quiet, directory=str(site))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            failed = 0
            for name, path, size in SHOTS:
                url = f"http://127.0.0.1:{server.server_port}/{path}"
                if shoot(chromium, url, size, out / f"{name}.png"):
                    print(out / f"{name}.png")
                else:
                    failed += 1
                    print(f"{name}: no screenshot of {url} within {TIMEOUT} s", file=sys.stderr)
        finally:
            server.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
