"""The notebooks as files: stored without outputs so they stay reviewable in git, and each fits the
time the README states for it. Every notebook runs headless, top to bottom, in its fast mode
(MINIDIT_FAST=1 shrinks sizes and steps), with the inline plotting backend a student's Jupyter
uses, and shows at least one figure in tests/test_student_notebooks.py: on the GPU path (the CuPy
stand-in of tests/standin where no CuPy is installed, as in CI) as the restored student edition,
whose code cells are exactly these, and on the CPU before the exercises are written."""
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

from conftest import summary

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
INLINE = "module://matplotlib_inline.backend_inline"


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb file"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stripped(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, \
                f"{path.name}: commit notebooks with outputs cleared"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def count_figures(nb):
    """The number of image outputs (PNG or SVG) of an executed notebook's code cells."""
    return sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
               if {"image/png", "image/svg+xml"} & set(out.get("data", {})))


def lesson_minutes(nb, run_seconds=0.0):
    """The README's count of a lesson's time: its prose (markdown not tagged "answer") at 100 words a
    minute, 5 minutes per "Your turn" exercise, and the minutes its cells run in the full mode."""
    prose = ["".join(c.source) for c in nb.cells
             if c.cell_type == "markdown" and "answer" not in c.get("metadata", {}).get("tags", [])]
    words = sum(len(text.split()) for text in prose)
    turns = sum(1 for text in prose if re.search(r"\*\*Your turn", text))
    return words / 100 + 5 * turns + run_seconds / 60, words, turns


def stated_minutes():
    """{notebook stem: minutes} from the README's course map."""
    rows = re.findall(r"^\| [^|]+ \| \[`(\w+)`\]\([^)]*\)[^|]* \| [^|]* \| (\d+) min", (ROOT / "README.md").read_text(),
                      flags=re.M)
    return {stem: int(minutes) for stem, minutes in rows}


def test_every_lesson_fits_the_time_the_readme_states():
    stated = stated_minutes()
    assert set(stated) == {p.stem for p in NOTEBOOKS}, "the README's course map must list every notebook once"
    over = []
    for path in NOTEBOOKS:
        copy = ROOT / "lessons" / path.name  # the executed copy says how long its full mode ran
        seconds = json.loads(copy.read_text())["metadata"].get("minidit", {}).get("seconds", 0) if copy.exists() else 0
        minutes, words, turns = lesson_minutes(nbformat.read(path, as_version=4), seconds)
        summary("notebooks: lesson time (README's count)",
                f"{path.stem}: {words} words, {turns} exercises, {seconds / 60:.1f} min running -> "
                f"{minutes:.0f} of {stated[path.stem]} min" + ("" if copy.exists() else " (no executed copy yet)"))
        if minutes > stated[path.stem]:
            over.append(f"{path.stem}: {minutes:.1f} min counted, {stated[path.stem]} stated")
    assert not over, over


# What `show_source` prints before a piece of the library: "# NAME  (line N)" or "# NAME, lines A-B",
# then the source from that line on.
SHOWN_SOURCE = re.compile(r"^# (minidit[\w.]*)(?:  \(line (\d+)\)|, lines (\d+)-(\d+))\n", re.M)
LESSONS = sorted((ROOT / "lessons").glob("*.ipynb"))


def _library_object(name):
    """The function, class or module a dotted name printed by show_source names."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for part in parts[k:]:
            obj = vars(obj)[part] if isinstance(obj, type) and part in vars(obj) else getattr(obj, part)
        return inspect.unwrap(obj.fget if isinstance(obj, property) else obj)
    raise LookupError(name)


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_executed_copies_show_the_source_as_it_is(path):
    """An executed lesson shows library source with the line it starts at; after a change to the
    library that moves or rewrites it, the copy shows what is no longer there, so it must run again
    (`python -m minidit.course.site execute --all NAME`)."""
    nb = json.loads(path.read_text())
    stale = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", ""))
            for m in SHOWN_SOURCE.finditer(text):
                name, first = m.group(1), int(m.group(2) or m.group(3))
                obj = _library_object(name)
                source = Path(inspect.getsourcefile(obj)).read_text().splitlines(keepends=True)
                last = int(m.group(4)) if m.group(4) else first - 1 + len(inspect.getsourcelines(obj)[0])
                if not text.startswith("".join(source[first - 1:last]), m.end()):  # every line shown, as it is now
                    stale.append(f"{name} at line {first}")
    assert not stale, f"{path.name} shows source that has since moved or changed: {stale}; execute it again"
