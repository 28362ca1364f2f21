"""The student edition's notebooks run: before any exercise is done, every cell that needs an
unfinished exercise shows one line naming the function, its file and the exercise (and cells after
it one line "needs exercise ..."), and nothing else fails; after `restore --all` they run clean.

Notebooks 00 and 05 are run in both states: 00 calls the layer exercises (linear, LayerNorm,
GELU) that the other notebooks build on, 05 the diffusion ones (q_sample, the posterior, the
loss); each runs in seconds in its fast mode, while all twelve twice would take minutes on the
CI's two cores. tests/test_notebooks.py runs all of them on the reference code.
"""
import ast
import os
import re

import pytest

from minidit.course import exercises as exm
from minidit.course.markers import ROOT, find_exercises, find_function, is_stub
from conftest import summary

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = ["00_backends_and_gradient_checks.ipynb", "05_diffusion_formulation.ipynb"]
ONE_LINE = re.compile(r"^(exercise not done: (\S+) in (minidit/\S+\.py) \(exercise [^)]+\); write it, then run "
                      r"this cell again|needs exercise .+)$")


def _run(edition, name, monkeypatch):
    monkeypatch.setenv("MINIDIT_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MINIDIT_DEVICE", "cpu")
    monkeypatch.setenv("PYTHONPATH", str(edition) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(edition / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(edition / "notebooks")}})
    client.execute()
    errors = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    return nb, errors


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_student_notebook_before_and_after_the_exercises(name, tmp_path, monkeypatch):
    if any(is_stub(find_function(ast.parse((ROOT / e.file).read_text()), e.name)) for e in find_exercises()):
        pytest.skip("this checkout is a student edition")
    edition = tmp_path / "student"
    exm.make(edition)
    nb, errors = _run(edition, name, monkeypatch)
    lines = [o.traceback for _, o in errors]
    summary("course: student-edition notebooks", f"{name} before the exercises: {len(errors)} cells stopped, "
            "each with one line")
    print(f"{name} before the exercises: {len(errors)} cells stopped, each with one line:")
    print("\n".join(f"  cell {i}: {o.traceback[0] if o.traceback else o.evalue}" for i, o in errors))
    assert errors, "a fresh edition must stop on an unfinished exercise"
    assert all(len(tb) == 1 and ONE_LINE.match(tb[0]) for tb in lines), lines
    first = ONE_LINE.match(lines[0][0])
    assert first.group(1).startswith("exercise not done") and (edition / first.group(3)).is_file()

    exm.restore(edition, None)
    nb, errors = _run(edition, name, monkeypatch)
    summary("course: student-edition notebooks", f"{name} after restore --all: {len(errors)} errors")
    assert errors == [], [o.traceback for _, o in errors]
