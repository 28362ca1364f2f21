"""The course site: the lessons executed once in their full mode (outputs committed in lessons/,
beside notebooks/ so that their relative links still resolve; each copy is stamped with a hash of
its notebook's cells), and a static site built from them with Sphinx and MyST-NB (pip install -e
".[docs]"; nothing is downloaded at build time and the build executes no notebook). It works on a
source checkout (pip install -e). Course tooling only: nothing here is part of DiT; docs/site.md is
the user's guide.

    python -m minidit.course.site execute [--fast] [--all] [NAME ...]   # notebooks/ -> lessons/
    python -m minidit.course.site build --out build/site        # README, docs/*.md, lessons -> HTML
    python -m minidit.course.site check build/site              # every internal link and image resolves
"""
import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
LESSONS = ROOT / "lessons"
INLINE = "module://matplotlib_inline.backend_inline"  # a student's Jupyter: figures become outputs


def cells_hash(nb):
    """sha256 of a notebook's cell types and sources: what the executed copy's outputs belong to."""
    cells = [[c["cell_type"], c["source"] if isinstance(c["source"], str) else "".join(c["source"])]
             for c in nb["cells"]]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def code_hash(nb):
    """sha256 of a notebook's code cells alone: what decides whether its outputs must be recomputed."""
    code = [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
            for c in nb["cells"] if c["cell_type"] == "code"]
    return hashlib.sha256(json.dumps(code, ensure_ascii=False).encode()).hexdigest()


def with_current_prose(copy, nb):
    """The executed `copy` with the cells of its notebook `nb` when only the prose changed since it
    ran (the same code cells in the same order): nb's cells, each code cell carrying the copy's
    outputs. None when the code differs (the copy must be executed again). Plain dicts (json) or
    nbformat's notebooks alike."""
    import copy as copying
    if copy.get("metadata", {}).get("minidit", {}).get("code_hash") != code_hash(nb):
        return None
    ran = iter([c for c in copy["cells"] if c["cell_type"] == "code"])
    fresh = copying.deepcopy(copy)
    fresh["cells"] = []
    for cell in nb["cells"]:
        cell = copying.deepcopy(cell)
        if cell["cell_type"] == "code":
            old = next(ran)
            cell["outputs"], cell["execution_count"] = old["outputs"], old["execution_count"]
        fresh["cells"].append(cell)
    fresh["metadata"]["minidit"] = dict(copy["metadata"]["minidit"], source_hash=cells_hash(nb))
    return fresh


def image_outputs(nb):
    """The number of image outputs (PNG, JPEG or SVG) in a notebook's code cells."""
    return sum(1 for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
               if any(k.startswith("image/") for k in o.get("data", {})))


def execute(names=(), fast=False, out=LESSONS, timeout=3600, again=False):
    """Run notebooks/<name>.ipynb top to bottom (all of them when names is empty), one at a time, in
    the full mode (fast: MINIDIT_FAST=1, for trying the machinery only) and write the executed
    copy, with its hashes and mode in metadata["minidit"], to out/<name>.ipynb (atomically).
    A notebook whose code cells are those of its executed copy (same mode) is not run again
    unless again=True: only its prose is brought up to date."""
    import nbclient
    import nbformat
    paths = [NOTEBOOKS / f"{n.removesuffix('.ipynb')}.ipynb" for n in names] or sorted(NOTEBOOKS.glob("*.ipynb"))
    env = dict(os.environ, MPLBACKEND=INLINE,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("MINIDIT_FAST", None)
    env.update({"MINIDIT_FAST": "1"} if fast else {})
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        old = out / path.name
        if not again and old.exists():
            old = nbformat.read(old, as_version=4)
            fresh = with_current_prose(old, nb) if old.metadata.get("minidit", {}).get("mode") == (
                "fast" if fast else "full") else None
            if fresh is not None:
                _write(fresh, out / path.name)
                print(f"{path.stem}: code unchanged since it ran: prose brought up to date, not run again "
                      "(--all runs it)", flush=True)
                continue
        t0 = time.time()
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(path.parent)}}).execute(env=env)
        seconds = time.time() - t0
        nb.metadata["minidit"] = {"source_hash": cells_hash(nb), "code_hash": code_hash(nb),
                                  "mode": "fast" if fast else "full",
                                  "device": env.get("MINIDIT_DEVICE", "cpu"), "seconds": round(seconds),
                                  "executed": time.strftime("%Y-%m-%d", time.gmtime())}
        _write(nb, out / path.name)
        print(f"{path.stem}: {'fast' if fast else 'full'} mode, {seconds:.0f} s, "
              f"{image_outputs(nb)} figure(s) -> {out / path.name}", flush=True)


def _write(nb, dest):
    import nbformat
    tmp = dest.parent / f".{dest.name}.tmp"
    nbformat.write(nb, tmp)
    os.replace(tmp, dest)


CONF = """\
project = "minidit"
extensions = ["myst_nb"]
nb_execution_mode = "off"              # the outputs are the committed executed lessons
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 4               # README-style links to #a-heading resolve
html_theme = "alabaster"
html_theme_options = {"page_width": "1100px"}
html_sidebars = {"**": ["navigation.html", "searchbox.html"]}
exclude_patterns = ["_build"]
suppress_warnings = ["misc.highlighting_failure", "toc.not_included"]  # linked READMEs: not in the sidebar
"""


def stage(dest):
    """Lay the site's sources out in dest as in the repository (so relative links keep working):
    README.md as index.md, docs/, and in lessons/ the executed copy of each notebook (the stripped
    notebook, with a warning, where no current executed copy exists); links to README.md and to
    notebooks/*.ipynb are pointed at index.md and lessons/. Local files the pages link to (source
    files, results, other READMEs) are copied too."""
    import nbformat
    shutil.copytree(ROOT / "docs", dest / "docs", ignore=shutil.ignore_patterns(".*"))
    (dest / "lessons").mkdir()
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        copy = LESSONS / path.name
        if not copy.exists():
            print(f"warning: {path.stem} has no executed copy in lessons/: it appears without figures")
            copy = path
        else:
            nb, ran = nbformat.read(path, as_version=4), nbformat.read(copy, as_version=4)
            if ran.metadata.get("minidit", {}).get("source_hash") != cells_hash(nb):
                fresh = with_current_prose(ran, nb)
                print(f"warning: lessons/{path.name} is older than the notebook: run "
                      f"python -m minidit.course.site execute {path.stem}"
                      + (" (only its prose changed: the site shows the current prose)" if fresh else ""))
                if fresh is not None:
                    nbformat.write(fresh, dest / "lessons" / path.name)
                    continue
        shutil.copy(copy, dest / "lessons" / path.name)
    pages = sorted(p.relative_to(dest).with_suffix("").as_posix() for p in (dest / "docs").rglob("*.md"))
    toc = "\n\n```{{toctree}}\n:hidden:\n:caption: {}\n:maxdepth: 1\n\n{}\n```\n"
    index = (ROOT / "README.md").read_text() + toc.format("Lessons", "lessons/*").replace(
        ":maxdepth: 1", ":maxdepth: 1\n:glob:") + toc.format("Documentation", "\n".join(pages))
    (dest / "index.md").write_text(index)
    pages = [dest / "index.md", *(dest / "docs").rglob("*.md"), *(dest / "lessons").glob("*.ipynb")]
    for page in pages:  # grows by the Markdown files the pages link to (data/README.md, ...)
        src_dir = ROOT / page.parent.relative_to(dest)

        def retarget(m):  # the README is the site's home page, index.md; a lesson is its executed copy
            target, path = m.group(2), (src_dir / unquote(m.group(2))).resolve()
            if path == ROOT / "README.md":
                target = target.removesuffix("README.md") + "index.md"
            elif path.parent == NOTEBOOKS and path.suffix == ".ipynb":
                target = target.replace("notebooks/", "lessons/")
            return f"]({m.group(1)}{target}"
        text = re.sub(r"\]\(\s*(<?)([^)\s>#]+)", retarget, page.read_text())
        page.write_text(text)
        for target in re.findall(r"\]\(\s*<?([^)\s>#]+)", text):
            src = (src_dir / unquote(target)).resolve()
            if "://" not in target and src.is_relative_to(ROOT) and src.is_file():
                rel = src.relative_to(ROOT)
                if not (dest / rel).exists():  # a source file, a result: the site offers it for download
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, dest / rel)
                    pages += [dest / rel] if rel.suffix == ".md" else []
    (dest / "conf.py").write_text(CONF)


def build(out):
    """Stage the sources in a temporary folder and build the HTML site into `out` (replacing an
    earlier build there); returns the Sphinx warnings (one string each)."""
    from sphinx.cmd.build import build_main
    out = Path(out).resolve()
    if (out / ".buildinfo").is_file():
        shutil.rmtree(out)  # a previous build: start afresh, so no page of a removed source stays
    with tempfile.TemporaryDirectory(prefix="minidit_site_") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        stage(src)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):  # -q: no progress, warnings to stderr; we print them once
            rc = build_main(["-b", "html", "-q", "-E", "--no-color", str(src), str(out)])
        text = err.getvalue().replace(str(src) + os.sep, "")
    if rc:
        raise SystemExit(f"sphinx failed (status {rc}): {text[-2000:]}")
    return [w for w in text.splitlines() if "WARNING:" in w or "ERROR:" in w]


def dead_references(warnings):
    """The warnings about a Markdown link to a page or heading that does not exist (Sphinx drops
    such a link from the page, so the HTML check cannot see it)."""
    return [w for w in warnings if "target not found" in w or "xref_missing" in w]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in {"a": ["href"], "img": ["src"], "link": ["href"], "script": ["src"]}.get(tag, []):
            if a.get(key):
                self.links.append(a[key])


def check_links(site):
    """(page, link) of every internal link, image, stylesheet or script on the site's HTML pages
    that does not resolve to a file of the site."""
    site = Path(site)
    broken = []
    for page in sorted(site.rglob("*.html")):
        parser = _Links()
        parser.feed(page.read_text(errors="replace"))
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or not parts.path:
                continue  # external, or an anchor on the same page
            target = (page.parent / unquote(parts.path)).resolve()
            if not (target.is_file() or (target / "index.html").is_file()) or not target.is_relative_to(site.resolve()):
                broken.append((page.relative_to(site).as_posix(), link))
    return broken


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minidit.course.site", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("execute", help="run the notebooks and write their executed copies to lessons/")
    e.add_argument("names", nargs="*", help="notebook names (default: all), e.g. 07_training_recipe")
    e.add_argument("--fast", action="store_true",
                   help="MINIDIT_FAST=1: to try the machinery; commit full-mode copies only")
    e.add_argument("--all", action="store_true",
                   help="run every named notebook again, even those whose code cells have not changed")
    b = sub.add_parser("build", help="build the static site")
    b.add_argument("--out", default="build/site", help="output folder (default build/site)")
    c = sub.add_parser("check", help="check that every internal link and image of a built site resolves")
    c.add_argument("site", nargs="?", default="build/site")
    args = p.parse_args(argv)
    if not (NOTEBOOKS.is_dir() and (ROOT / "README.md").is_file()):
        p.error(f"{ROOT} is not a minidit source checkout (no notebooks/ or README.md): install with pip install -e")
    if args.cmd == "execute":
        missing = [n for n in args.names if not (NOTEBOOKS / f"{n.removesuffix('.ipynb')}.ipynb").exists()]
        if missing:
            p.error(f"no such notebook in {NOTEBOOKS}: {', '.join(missing)}")
        execute(args.names, fast=args.fast, again=args.all)
    elif args.cmd == "build":
        out = Path(args.out)
        if out.exists() and not (out / ".buildinfo").is_file() and (out.is_file() or any(out.iterdir())):
            p.error(f"{out} is not empty and holds no earlier site build: give a new or empty folder")
        warnings = build(out)
        dead = dead_references(warnings)
        print("\n".join(warnings + [f"site: {len(list(out.rglob('*.html')))} pages in {out} ({len(warnings)} "
                                    f"warnings, {len(dead)} dead references); open {out / 'index.html'}"]))
        return 1 if dead else 0
    else:
        if not Path(args.site, "index.html").is_file():
            print(f"{args.site} holds no built site (no index.html)", file=sys.stderr)
            return 2
        broken = check_links(args.site)
        print("\n".join([f"{page}: broken link {link}" for page, link in broken] + [f"broken links: {len(broken)}"]))
        return 1 if broken else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
