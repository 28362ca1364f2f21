"""The student edition's notebooks, every one of them, in both states (issue 25):

- before any exercise is done, every cell that needs an unfinished exercise shows one line naming
  the function, its file and the exercise (cells after it: one line "needs exercise ..."), and no
  other error appears;
- after `restore --all` (the state of a student who has written every exercise) they run clean
  and show their figures, with the inline backend of a student's Jupyter.

The second run is also the suite's run of the lessons themselves, on the GPU (MINIDIT_DEVICE=gpu:
the CuPy stand-in of tests/standin in CI, where no CuPy is installed; the CPU where no GPU path
exists): a restored edition holds the reference bodies, and its notebooks hold exactly the code
cells of notebooks/ (checked below; the edition only drops answer cells, which are prose). The
first run is on the CPU, and lessons/ holds every notebook executed on the CPU in its full mode,
stamped with the hash of the code it ran (tests/test_site.py). Both runs here use the fast mode
(MINIDIT_FAST=1).
"""
import ast
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from minidit import backend
from minidit.course import exercises as exm
from minidit.course import site
from minidit.course.editions import RESULTS_FIRST
from minidit.course.markers import ROOT, find_exercises, find_function, is_stub
from conftest import summary
from test_notebooks import INLINE, count_figures

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ONE_LINE = re.compile(r"^(exercise not done: (\S+) in (minidit/\S+\.py) \(exercise [^)]+\); write it, then run "
                      r"this cell again|needs exercise .+)$")


def _a_student_edition():
    return any(is_stub(find_function(ast.parse((ROOT / e.file).read_text()), e.name)) for e in find_exercises())


@pytest.fixture(scope="session")
def editions(tmp_path_factory):
    """(fresh student edition, the same edition after restore --all), made once per test process."""
    if _a_student_edition():
        pytest.skip("this checkout is a student edition")
    base = tmp_path_factory.mktemp("editions")
    fresh, done = base / "student", base / "restored"
    exm.make(fresh)
    shutil.copytree(fresh, done)
    exm.restore(done, None)
    return fresh, done


def _run(edition, name, monkeypatch, plots="Agg", device="cpu"):
    monkeypatch.setenv("MINIDIT_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", plots)
    monkeypatch.setenv("MINIDIT_DEVICE", device)
    monkeypatch.setenv("PYTHONPATH", str(edition) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(edition / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(edition / "notebooks")}})
    client.execute()
    errors = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    return nb, errors


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_before_the_exercises_only_one_line_messages(path, editions, monkeypatch):
    fresh, _ = editions
    if path.name in RESULTS_FIRST:  # results first: the student sees the payoff before running anything
        shipped = nbformat.read(fresh / "notebooks" / path.name, as_version=4)
        copy = ROOT / "lessons" / path.name
        if copy.exists() and site.with_current_prose(json.loads(copy.read_text()), json.loads(path.read_text())):
            assert count_figures(shipped) > 0, f"the student edition's {path.name} lost its executed figures"
    nb, errors = _run(fresh, path.name, monkeypatch)
    lines = [o.traceback for _, o in errors]
    summary("course: student-edition notebooks", f"{path.stem} before the exercises: {len(errors)} cells stopped, "
            "each with one line" if errors else f"{path.stem} before the exercises: no cell needs an exercise")
    print("\n".join(f"  cell {i}: {o.traceback[0] if o.traceback else o.evalue}" for i, o in errors))
    assert all(len(tb) == 1 and ONE_LINE.match(tb[0]) for tb in lines), lines
    if errors:
        first = ONE_LINE.match(lines[0][0])
        assert first.group(1).startswith("exercise not done") and (fresh / first.group(3)).is_file()


def _code(nb):
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
            and "exercise-messages" not in c.get("metadata", {}).get("tags", [])]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_after_the_exercises_runs_clean_with_figures(path, editions, monkeypatch):
    _, done = editions
    assert _code(json.loads((done / "notebooks" / path.name).read_text())) == _code(json.loads(path.read_text())), \
        f"the student edition's {path.name} runs other code than notebooks/{path.name}"
    device = "gpu" if backend.gpu_available() else "cpu"
    nb, errors = _run(done, path.name, monkeypatch, plots=INLINE, device=device)
    figures = count_figures(nb)
    summary("course: student-edition notebooks", f"{path.stem} after restore --all: {len(errors)} errors")
    summary("notebooks: figures shown", f"{path.stem} [{device}, student edition after the exercises]: "
                                        f"{figures} figure(s)")
    assert errors == [], [o.traceback for _, o in errors]
    assert figures > 0, f"{path.name} promises figures but showed none when executed"


def test_the_edition_has_every_lesson():
    assert NOTEBOOKS and all(Path(ROOT / "notebooks" / n).exists() for n in RESULTS_FIRST)
