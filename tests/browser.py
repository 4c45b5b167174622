"""Open built HTML pages in headless Chromium (Playwright) and report what a reader would see."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"]
# sphinx-thebe registers its loader script twice on every page; harmless, and known.
KNOWN_CONSOLE_ERRORS = ("thebe",)
SCREEN = (1280, 900)  # the viewport of every page, as a reader's laptop
# Text of a Python warning as Python prints it ("...py:12: UserWarning: ...") or as tqdm does.
WARNING_RE = re.compile(r"\b\w*Warning\b: |\bwarnings\.warn\(")


@dataclass
class PageReport:
    url: str
    title: str = ""
    h1: str = ""
    images: int = 0
    broken_images: list[str] = field(default_factory=list)
    math_nodes: int = 0
    math_rendered: int = 0
    math_errors: int = 0
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    height_px: int = 0  # full page height, for "screens" (of SCREEN[1] px)
    stderr_blocks: int = 0  # output blocks a cell wrote to stderr
    output_blocks: int = 0
    warnings: list[str] = field(default_factory=list)  # lines of visible text that look like a warning
    paths: list[str] = field(default_factory=list)  # visible text naming a folder of the build machine
    visible_injected_parameters: int = 0  # papermill's injected cell, shown on the page
    wide_code_cells: int = 0  # code cells wider than the page (horizontal scroll bar)

    @property
    def screens(self) -> float:
        return self.height_px / SCREEN[1]


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) for the duration of the block."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def inspect_pages(urls: list[str], screenshot_dir: Path | None = None,
                  machine_paths: tuple[str, ...] = ()) -> list[PageReport]:
    """Load each URL, wait for MathJax, and collect what a reader would see on it.

    Title, images, math and console errors; the output blocks and those from stderr; lines that
    look like a warning; any of ``machine_paths`` (folders of the build machine) in the visible
    text; a visible injected-parameters cell; code cells wider than the page. With
    ``screenshot_dir``, a full-page screenshot of each page is saved there.
    """
    from playwright.sync_api import sync_playwright

    reports = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            for url in urls:
                page = browser.new_page(viewport={"width": SCREEN[0], "height": SCREEN[1]})
                r = PageReport(url=url)
                page.on("console", lambda m, r=r: r.console_errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, r=r: r.console_errors.append(str(e)))
                page.on("requestfailed", lambda q, r=r: r.failed_requests.append(q.url))
                page.on("response", lambda x, r=r: r.failed_requests.append(f"{x.status} {x.url}")
                        if x.status >= 400 else None)
                page.goto(url, wait_until="load")
                page.wait_for_function(
                    "() => document.querySelectorAll('.math').length === 0"
                    " || (window.MathJax && MathJax.startup && MathJax.startup.promise)", timeout=20_000)
                page.evaluate("() => (window.MathJax && MathJax.startup && MathJax.startup.promise)"
                              " ? MathJax.startup.promise.then(() => true) : null")
                page.wait_for_timeout(300)
                r.title = page.title()
                r.h1 = page.eval_on_selector("h1", "e => e.textContent") if page.query_selector("h1") else ""
                imgs = page.eval_on_selector_all(
                    "article img", "els => els.map(e => [e.currentSrc || e.src, e.complete && e.naturalWidth > 0])")
                r.images = len(imgs)
                r.broken_images = [src for src, ok in imgs if not ok]
                r.math_nodes = len(page.query_selector_all("article .math"))
                r.math_rendered = len(page.query_selector_all("article .math mjx-container"))
                r.math_errors = len(page.query_selector_all("mjx-merror"))
                r.height_px = int(page.evaluate("() => document.documentElement.scrollHeight"))
                r.output_blocks = len(page.query_selector_all("article .cell_output .output"))
                r.stderr_blocks = len(page.query_selector_all("article .output.stderr"))
                text = page.inner_text("article") if page.query_selector("article") else ""
                r.warnings = [line.strip()[:200] for line in text.splitlines() if WARNING_RE.search(line)]
                r.paths = sorted({p for p in machine_paths if p and p in text})
                r.visible_injected_parameters = int(page.evaluate(
                    "() => [...document.querySelectorAll('.tag_injected-parameters')]"
                    ".filter(e => e.offsetParent !== null).length"))
                r.wide_code_cells = int(page.evaluate(
                    "() => [...document.querySelectorAll('article .cell_input pre')]"
                    ".filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 2).length"))
                if screenshot_dir is not None:
                    name = url.rstrip("/").split("/")[-1].replace(".html", "") or "index"
                    page.screenshot(path=str(screenshot_dir / f"{name}.png"), full_page=True)
                reports.append(r)
                page.close()
        finally:
            browser.close()
    return reports


def unexpected_errors(report: PageReport) -> list[str]:
    return [e for e in report.console_errors if not any(k in e.lower() for k in KNOWN_CONSOLE_ERRORS)]
