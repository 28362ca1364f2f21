"""Every notebook in notebooks/ runs headless, top to bottom, in its fast mode (MINIDIT_FAST=1
shrinks sizes and steps), with the inline plotting backend a student's Jupyter uses, and shows at
least one figure: here with MINIDIT_DEVICE=gpu (the CuPy stand-in of tests/standin where no CuPy is
installed, as in CI); on the CPU in tests/test_student_notebooks.py, whose restored student edition
runs exactly these code cells. Notebooks are stored without outputs so they stay reviewable in git,
and each fits the time the README states for it."""
import json
import os
import re
from pathlib import Path

import pytest

from minidit import backend
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


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_the_gpu(path, monkeypatch, tmp_path):
    """Each notebook, headless, in fast mode, with MINIDIT_DEVICE=gpu (the CPU run:
    tests/test_student_notebooks.py)."""
    if not backend.gpu_available():
        pytest.skip("no CuPy/GPU on this machine")
    monkeypatch.setenv("MINIDIT_FAST", "1")
    # the backend of a student's Jupyter: figures become image outputs (Agg would show nothing)
    monkeypatch.setenv("MPLBACKEND", INLINE)
    monkeypatch.setenv("MINIDIT_DEVICE", "gpu")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    figures = count_figures(nb)
    summary("notebooks: figures shown", f"{path.stem} [gpu]: {figures} figure(s)")
    assert figures > 0, f"{path.name} promises figures but showed none when executed"


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
