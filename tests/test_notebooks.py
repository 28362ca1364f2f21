"""Every notebook in notebooks/ runs headless, top to bottom, in its fast mode
(MINIDIT_FAST=1 shrinks sizes and steps), with the inline plotting backend a student's Jupyter
uses, and shows at least one figure; notebooks are stored without outputs so they stay
reviewable in git."""
import os
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
@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, device, monkeypatch, tmp_path):
    """Each notebook, headless, in fast mode, on the CPU and with MINIDIT_DEVICE=gpu (the CuPy
    stand-in of tests/standin where no CuPy is installed, as in CI)."""
    if device == "gpu" and not backend.gpu_available():
        pytest.skip("CuPy is installed but finds no GPU")
    monkeypatch.setenv("MINIDIT_FAST", "1")
    # the backend of a student's Jupyter: figures become image outputs (Agg would show nothing)
    monkeypatch.setenv("MPLBACKEND", INLINE)
    monkeypatch.setenv("MINIDIT_DEVICE", device)
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    figures = count_figures(nb)
    summary("notebooks: figures shown", f"{path.stem} [{device}]: {figures} figure(s)")
    assert figures > 0, f"{path.name} promises figures but showed none when executed"


def count_figures(nb):
    """The number of image outputs (PNG or SVG) of an executed notebook's code cells."""
    return sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
               if {"image/png", "image/svg+xml"} & set(out.get("data", {})))
