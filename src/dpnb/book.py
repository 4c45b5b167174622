"""Execute the chapters with papermill and build the HTML book with Jupyter Book 1.x.

``make book`` runs ``dpnb book --profile book``. The steps:

1. Read ``_toc.yml`` (repo root). Entries under ``nbs/`` are chapters (paired notebooks);
   the other entries are pages under ``book/``.
2. For each chapter, merge the profile's overrides from ``book/profiles.yml`` into the
   notebook's ``parameters`` cell (the ``book`` profile is the defaults themselves) and
   execute it with papermill into ``<build>/executed/NAME.ipynb``. A chapter whose notebook,
   parameters and ``dpnb`` source are unchanged since its last successful run is reused,
   not re-executed (the key is a hash of their contents).
3. Each chapter writes its headline numbers to ``$DPNB_RESULTS/NAME.csv``; the book points
   ``DPNB_RESULTS`` at a scratch folder and moves the CSV to ``<build>/results/`` on success.
4. Stage the executed notebooks, the pages, the bibliography and a local MathJax into
   ``<build>/stage`` (same paths as in the repository, so Binder buttons point at the real
   files) and run ``jupyter-book build``; the new HTML replaces ``<build>/html`` only when
   the build succeeded.

A failing chapter stops everything with its name, the failing cell and the error; its
notebook is kept in ``<build>/failed/`` for inspection, and the HTML is not touched.

With ``--workers N`` up to N chapters execute at once on Dask distributed (:mod:`dpnb.engine`,
the engine of ``dpnb sweep`` too), each in its own worker process with ``--threads`` threads for
its kernel's numerical libraries (default: the machine's cores divided by N, so that N chapters
do not oversubscribe the cores); after a failure no further chapter starts, the running ones
finish, and the first failure is reported. ``--scheduler ADDRESS`` sends the chapters to a
running Dask scheduler instead of a local cluster.

Example::

    dpnb book --profile smoke            # every chapter in seconds, then the HTML
    dpnb book --profile smoke --workers 2
    dpnb book --only budget --profile book
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dpnb import __version__
from dpnb.params import ParameterError
from dpnb.progress import ENV as PROGRESS_ENV

PROFILES = ("smoke", "book", "gpu")
#: Code and text outputs wrap at the page's width instead of scrolling sideways.
PAGE_CSS = """\
div.cell_input pre, div.cell_output pre { white-space: pre-wrap; overflow-wrap: anywhere; }
"""
MATHJAX_VERSION = "3.2.2"


class ChapterFailed(RuntimeError):
    """A chapter raised while papermill executed it."""


@dataclass(frozen=True)
class Chapter:
    name: str  # "budget"
    toc_file: str  # "nbs/budget"

    def source(self, root: Path) -> Path:
        return root / f"{self.toc_file}.ipynb"


def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder upwards holding ``_toc.yml`` and ``pyproject.toml``."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "_toc.yml").is_file() and (d / "pyproject.toml").is_file():
            return d
    raise ParameterError(f"no dpnb checkout (with _toc.yml and pyproject.toml) at or above {here}")


def _toc_files(node: Any) -> list[str]:
    files: list[str] = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                files.append(node[key])
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []) or []:
                files.extend(_toc_files(child))
    elif isinstance(node, list):
        for child in node:
            files.extend(_toc_files(child))
    return files


def toc_entries(root: Path) -> list[str]:
    """Every file named in ``_toc.yml``, in order (without suffix)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    return _toc_files(toc)


def chapters(root: Path) -> list[Chapter]:
    """The chapters of the book: the ``_toc.yml`` entries that are notebooks under ``nbs/``."""
    return [Chapter(Path(f).name, f) for f in toc_entries(root) if f.startswith("nbs/")]


def profile_parameters(root: Path, profile: str, chapter: str, *, tiny: bool = False) -> dict[str, Any]:
    """Parameter overrides of ``profile`` for ``chapter`` (``book`` = none: the notebook's defaults).

    ``tiny`` (gpu only) lays the ``gpu-tiny`` overlay of ``book/profiles.yml`` over the gpu values:
    the same code paths on little data and few steps (:func:`dpnb.chapters.shrinks`); the chapter
    then records its profile as ``gpu-tiny``."""
    if profile not in PROFILES:
        raise ParameterError(f"profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    data = yaml.safe_load((root / "book" / "profiles.yml").read_text()) or {}
    overrides = dict((data.get(profile) or {}).get(chapter) or {})
    overrides["profile"] = profile
    if tiny:
        if profile != "gpu":
            raise ParameterError(f"--tiny shrinks the gpu profile; got --profile {profile}")
        from dpnb.chapters import shrinks

        small = (data.get("gpu-tiny") or {}).get(chapter) or {}
        source = root / "nbs" / f"{chapter}.ipynb"
        defaults = notebook_defaults(source) if source.is_file() else {}
        for name, value in small.items():
            if name not in defaults:
                raise ParameterError(f"book/profiles.yml gpu-tiny.{chapter}: {chapter} has no parameter {name!r}")
            if (why := shrinks(name, overrides.get(name, defaults[name]), value)) is not None:
                raise ParameterError(f"book/profiles.yml gpu-tiny.{chapter}: {why}")
        overrides.update(small, profile="gpu-tiny")
    return overrides


def notebook_defaults(notebook: Path) -> dict[str, Any]:
    """The values of the notebook's cell tagged ``parameters`` (its book profile)."""
    nb = json.loads(notebook.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"{notebook.name} must have exactly one cell tagged 'parameters'; it has {len(cells)}")
    src = cells[0]["source"]
    namespace: dict[str, Any] = {}
    exec("".join(src) if isinstance(src, list) else src, namespace)  # our own notebooks: plain assignments
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def _notebook_digest(path: Path) -> str:
    nb = json.loads(path.read_text())
    cells = [(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"],
              sorted(c.get("metadata", {}).get("tags", []))) for c in nb["cells"]]
    return json.dumps(cells)


def cache_key(notebook: Path, parameters: dict[str, Any]) -> str:
    """Hash of what a notebook's outputs depend on: its cells, its parameters, the data folder and
    the dpnb source."""
    h = hashlib.sha256()
    h.update(__version__.encode())
    h.update(_notebook_digest(notebook).encode())
    h.update(json.dumps(parameters, sort_keys=True).encode())
    h.update(os.environ.get("DPNB_DATA", "").encode())
    pkg = Path(__file__).resolve().parent
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def execute_chapter(root: Path, build: Path, chapter: Chapter, profile: str, *, force: bool = False,
                    threads: int | None = None, tiny: bool = False) -> str:
    """Execute one chapter unless its cached copy is current; returns "cached" or "executed".

    ``threads`` caps the kernel's OpenMP/BLAS threads (set when several chapters run at once)."""
    params = profile_parameters(root, profile, chapter.name, tiny=tiny)
    return execute_notebook(root, chapter.source(root), name=chapter.name, parameters=params,
                            executed=build / "executed" / f"{chapter.name}.ipynb", results=build / "results",
                            failed=build / "failed" / f"{chapter.name}.ipynb", cache=build / "cache",
                            label=f"chapter {chapter.toc_file}", force=force, threads=threads)


def execute_notebook(root: Path, source: Path, *, name: str, parameters: dict[str, Any], executed: Path,
                     results: Path, failed: Path, cache: Path, label: str, force: bool = False,
                     threads: int | None = None) -> str:
    """Execute ``source`` with ``parameters`` into ``executed`` unless that copy is current.

    The one mechanism behind ``dpnb book`` and ``dpnb sweep``: the cache key (:func:`cache_key`)
    sits beside the executed notebook; the tables the notebook saves (``$DPNB_RESULTS``) land in
    ``results``; a failing notebook is kept at ``failed`` and :class:`ChapterFailed` names ``label``,
    the cell and the error. Returns "cached" or "executed"."""
    import papermill as pm

    key = cache_key(source, parameters)
    key_file = executed.with_suffix(".key")
    if not force and executed.is_file() and key_file.is_file() and key_file.read_text() == key:
        return "cached"
    for d in (executed.parent, results):
        d.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"dpnb-{name}-", dir=executed.parent))
    out = scratch / f"{name}.ipynb"
    old_env = {k: os.environ.get(k) for k in ("DPNB_RESULTS", "JUPYTER_PATH", "DPNB_CACHE", PROGRESS_ENV, *THREAD_ENV,
                                              "MALLOC_TRIM_THRESHOLD_")}
    # set by Dask's nanny on a cluster's workers: it makes the kernel's PyTorch allocations about 1.5x slower
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    if threads is not None:
        for k in THREAD_ENV:
            os.environ[k] = str(threads)
    os.environ["DPNB_RESULTS"] = str(scratch)
    # No progress bars inside the pages: papermill would keep every redraw as an output block.
    # The commands print one line per notebook instead.
    os.environ[PROGRESS_ENV] = "0"
    # Cached features (dpnb.features) live with the build unless the user chose a place.
    os.environ["DPNB_CACHE"] = old_env["DPNB_CACHE"] or str(cache)
    # Prefer the kernel installed in this environment over any user-wide "python3" kernel.
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        p for p in (str(Path(sys.prefix) / "share" / "jupyter"), old_env["JUPYTER_PATH"]) if p)
    try:
        pm.execute_notebook(str(source), str(out), parameters=parameters, cwd=str(root),
                            kernel_name="python3", progress_bar=False, log_output=False)
    except pm.PapermillExecutionError as e:
        failed.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out), failed)
        first = next((line for line in e.source.splitlines() if line.strip()), "")
        raise ChapterFailed(
            f"{label} failed in cell {e.cell_index} (`{first.strip()}`): "
            f"{e.ename}: {e.evalue}  [notebook kept in {failed}]"
        ) from None
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not out.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    hide_injected_parameters(out)
    for csv in scratch.glob("*.csv"):  # the notebook's results and any extra tables it saved
        os.replace(csv, results / csv.name)
    os.replace(out, executed)
    key_file.write_text(key)
    shutil.rmtree(scratch, ignore_errors=True)
    return "executed"


def hide_injected_parameters(notebook: Path) -> None:
    """Tag papermill's injected-parameters cell ``remove-cell``: Jupyter Book leaves it out of the page.

    The cell stays in the executed notebook (Binder, ``book/_build/executed``), where a reader can
    see which profile ran; the page itself shows the ``parameters`` cell, the defaults.
    """
    nb = json.loads(notebook.read_text())
    changed = False
    for cell in nb["cells"]:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
            changed = True
    if changed:
        tmp = notebook.with_suffix(".tmp")
        tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        os.replace(tmp, notebook)


def find_mathjax(root: Path) -> Path | None:
    """The ``es5`` folder of a local MathJax 3 (``make setup`` installs it with npm)."""
    candidates = [os.environ.get("DPNB_MATHJAX", ""),
                  str(root / ".venv" / "mathjax" / "node_modules" / "mathjax" / "es5")]
    for c in candidates:
        if c and (Path(c) / "tex-chtml.js").is_file():
            return Path(c)
    return None


def _write_favicon(path: Path) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (32, 32), (42, 77, 105, 255))
    ImageDraw.Draw(img).text((11, 8), "e", fill=(255, 255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="ICO")


def stage(root: Path, build: Path) -> Path:
    """Assemble the Jupyter Book source: pages, executed chapters, bibliography, MathJax."""
    src = build / "stage"
    if src.exists():
        shutil.rmtree(src)
    (src / "_static").mkdir(parents=True)
    shutil.copy(root / "_toc.yml", src / "_toc.yml")
    config = yaml.safe_load((root / "book" / "_config.yml").read_text())
    mathjax = find_mathjax(root)
    if mathjax is not None:
        # Not under _static: Jupyter Book adds every .js there to every page.
        dest = src / "_extra" / "mathjax"
        for part in ("input", "output/chtml", "ui", "a11y"):  # what tex-chtml.js loads lazily
            shutil.copytree(mathjax / part, dest / part)
        shutil.copy(mathjax / "tex-chtml.js", dest / "tex-chtml.js")
        # Sphinx resolves a relative mathjax_path from _static/.
        config.setdefault("sphinx", {}).setdefault("config", {})["mathjax_path"] = "../mathjax/tex-chtml.js"
    else:
        print("warning: no local MathJax (run `make setup`); the HTML will load it from a CDN",
              file=sys.stderr)
    _write_favicon(src / "_extra" / "favicon.ico")  # browsers ask for /favicon.ico on every site
    # Jupyter Book adds every stylesheet under _static to every page.
    (src / "_static" / "dpnb.css").write_text(PAGE_CSS)
    sphinx = config.setdefault("sphinx", {}).setdefault("config", {})
    sphinx["html_extra_path"] = ["_extra"]  # copied to the root of the HTML
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for item in (root / "book").iterdir():
        if item.name.startswith("_") or item.name == "profiles.yml":
            continue
        dest = src / "book" / item.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if item.is_dir() else shutil.copy)(item, dest)
    _write_results_page(root, build, src)
    for ch in chapters(root):
        dest = src / f"{ch.toc_file}.ipynb"
        dest.parent.mkdir(parents=True, exist_ok=True)
        executed = build / "executed" / f"{ch.name}.ipynb"
        if executed.is_file():
            shutil.copy(executed, dest)
        else:
            print(f"warning: chapter {ch.name} has not been executed; it appears without outputs",
                  file=sys.stderr)
            shutil.copy(ch.source(root), dest)
    return src


RESULTS_PAGE = "book/results"  # the toc entry of the generated results page


def _title(notebook: Path) -> str:
    """The first level-1 heading of a notebook, or its file name."""
    import json

    for cell in json.loads(notebook.read_text()).get("cells", []):
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return notebook.stem


def _write_results_page(root: Path, build: Path, src: Path) -> None:
    """Generate ``book/results.md`` from the chapters' results CSVs (:mod:`dpnb.summary`), if the toc lists it."""
    from dpnb.summary import results_page

    if RESULTS_PAGE not in toc_entries(root):
        return
    titles = [(ch.name, _title(ch.source(root))) for ch in chapters(root)]
    page = src / f"{RESULTS_PAGE}.md"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(results_page(build / "results", chapters=titles))


def build_html(root: Path, build: Path) -> Path:
    """Run Jupyter Book on the staged source; swap the result into ``<build>/html`` on success."""
    src = stage(root, build)
    tmp = Path(tempfile.mkdtemp(prefix="dpnb-html-", dir=build))
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(src), "--path-output", str(tmp),
           "--builder", "html", "-W", "-n", "--keep-going", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    html = tmp / "_build" / "html"
    if proc.returncode != 0 or not (html / "index.html").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise ChapterFailed(f"jupyter-book build failed (the previous HTML is kept):\n{tail}")
    final = build / "html"
    old = build / ".html-old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(html, final)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return final / "index.html"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=PROFILES, default="book",
                   help="parameter profile: smoke (tests), book (defaults), gpu (full reproductions)")
    p.add_argument("--tiny", action="store_true",
                   help="with --profile gpu: the gpu code paths on little data and few steps (seconds on a CPU)")
    p.add_argument("--only", metavar="CHAPTER", nargs="+", help="execute only these chapters (e.g. budget mnist)")
    p.add_argument("--build-dir", default=None, help="output folder (default book/_build)")
    p.add_argument("--force", action="store_true", help="re-execute even when the cache is current")
    p.add_argument("--no-html", action="store_true", help="execute the chapters only")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="chapters executed at once (default 1)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="threads per chapter when --workers > 1 (default: cores // workers)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="with --workers N: run the chapters on this Dask scheduler (tcp://host:8786) instead of "
                        "a local cluster; its workers need this checkout and the data at the same paths")


def _timed(root: Path, build: Path, chapter: Chapter, profile: str, force: bool,
           threads: int | None, tiny: bool = False) -> tuple[str, float]:
    t0 = time.perf_counter()
    state = execute_chapter(root, build, chapter, profile, force=force, threads=threads, tiny=tiny)
    return state, time.perf_counter() - t0


def _label(a: argparse.Namespace) -> str:
    return "gpu-tiny" if a.tiny else a.profile


def _execute_parallel(root: Path, build: Path, todo: list[Chapter], a: argparse.Namespace) -> None:
    """Up to ``a.workers`` chapters at once on Dask (:mod:`dpnb.engine`), one worker process each.
    Once a chapter has failed no new one starts; the running ones finish, and the failure of the
    chapter earliest in the book is raised."""
    from dpnb import engine

    threads = a.threads or max(1, (os.cpu_count() or 1) // a.workers)
    jobs = [engine.Job(ch.name, _timed, (root, build, ch, a.profile, a.force, threads, a.tiny)) for ch in todo]

    def started(job: engine.Job) -> None:
        print(f"[dpnb book] {job.key} ({_label(a)} profile, {threads} thread{'s' if threads > 1 else ''}) ...",
              flush=True)

    def done(out: engine.Outcome) -> None:
        if out.ok:
            state, seconds = out.value
            print(f"[dpnb book] {out.key}: {state} in {seconds:.1f} s", flush=True)

    with engine.connect(workers=a.workers, scheduler=a.scheduler) as client:
        outcomes = engine.run(jobs, client=client, slots=None if a.scheduler else a.workers,
                              stop_after_failure=True,
                              on_start=started, on_done=done)
    for out in outcomes:  # in the book's order: the earliest failure
        if not out.ok:
            if isinstance(out.error, ChapterFailed):
                raise out.error
            raise ChapterFailed(f"chapter {out.key} could not run: {type(out.error).__name__}: {out.error}")


def main(a: argparse.Namespace) -> int:
    root = find_root()
    # a tiny run is a check of the gpu code paths, not the book: it builds apart from book/_build
    build = (Path(a.build_dir).resolve() if a.build_dir else
             root / "book" / "_build" / "gpu-tiny" if a.tiny else root / "book" / "_build")
    todo = chapters(root)
    if a.only:
        names = [c.name for c in todo]
        if bad := [n for n in a.only if n not in names]:
            raise ParameterError(f"--only must be one of {', '.join(names)}; got {bad[0]!r}")
        todo = [c for c in todo if c.name in a.only]  # in the book's order
    if a.workers < 1 or (a.threads is not None and a.threads < 1):
        raise ParameterError(f"--workers and --threads must be integers >= 1; got {a.workers} and {a.threads}")
    try:
        if a.scheduler is not None or (a.workers > 1 and len(todo) > 1):
            _execute_parallel(root, build, todo, a)
        for ch in (todo if a.scheduler is None and (a.workers == 1 or len(todo) == 1) else []):
            t0 = time.perf_counter()
            print(f"[dpnb book] {ch.name} ({_label(a)} profile) ...", flush=True)
            state = execute_chapter(root, build, ch, a.profile, force=a.force, tiny=a.tiny)
            print(f"[dpnb book] {ch.name}: {state} in {time.perf_counter() - t0:.1f} s", flush=True)
        if not a.no_html:
            t0 = time.perf_counter()
            index = build_html(root, build)
            print(f"[dpnb book] HTML built in {time.perf_counter() - t0:.1f} s: {index}", flush=True)
    except ChapterFailed as e:
        print(f"dpnb book: error: {e}", file=sys.stderr)
        return 1
    return 0
