"""Open a page in real headless Chromium (Debian's ``chromium``) and report what happened.

One run with ``--dump-dom`` gives the DOM after load; one with ``--screenshot``
gives a PNG.  With ``--enable-logging=stderr --v=0`` Chromium writes every console
message (``console.*`` calls, uncaught exceptions) to stderr as
``INFO:CONSOLE...] "message", source: ...``; those lines are collected.  Each
run gets a fresh profile and every network-y feature off, so nothing leaves the
machine.  ``hack/install-chromium.sh`` installs the browser.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--hide-scrollbars",
]
_CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]\s*(.*)")


@dataclass(frozen=True)
class PageLoad:
    dom: str
    console: list[str]
    screenshot: Path | None


def chromium() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def _run(binary: str, args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_page(page: Path, *, workdir: Path, screenshot: Path | None = None, size: str = "1100,2600") -> PageLoad:
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed; run `bash hack/install-chromium.sh`")
    url = page.resolve().as_uri()
    dumped = _run(binary, ["--dump-dom", url], workdir / "profile-dom")
    console = [m.group(1) for line in dumped.stderr.splitlines() if (m := _CONSOLE.search(line))]
    if dumped.returncode != 0 or "<html" not in dumped.stdout:
        raise RuntimeError(f"chromium failed to load {url} ({dumped.returncode}): {dumped.stderr[-2000:]}")
    shot = None
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        taken = _run(binary, [f"--screenshot={screenshot}", f"--window-size={size}", url], workdir / "profile-shot")
        console += [m.group(1) for line in taken.stderr.splitlines() if (m := _CONSOLE.search(line))]
        shot = screenshot if screenshot.exists() else None
    return PageLoad(dom=dumped.stdout, console=console, screenshot=shot)


def ink_fraction(png: Path) -> float:
    """Share of pixels that are not (near) white: 0 for a blank page."""
    import matplotlib.image as mpimg

    pixels = mpimg.imread(str(png))[..., :3]
    return float((pixels.min(axis=-1) < 0.9).mean())
