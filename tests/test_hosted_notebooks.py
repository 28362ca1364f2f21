"""The first cell of every lesson (issue 26): the same set-up cell everywhere, which fetches
minidit on a hosted notebook from the one setting MINIDIT_SOURCE (or says in one line that it is
empty) and picks the device through start_lesson, honouring MINIDIT_DEVICE."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minidit import backend
from minidit.course.notebook import HOSTED_CELL_MARK, set_install_source, start_lesson

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def first_cell(path):
    cell = json.loads(path.read_text())["cells"][0]
    return cell["cell_type"], "".join(cell["source"])


def test_every_notebook_opens_with_the_same_set_up_cell():
    cells = {p.name: first_cell(p) for p in NOTEBOOKS}
    assert len(cells) >= 10
    for name, (kind, text) in cells.items():
        assert kind == "code" and text.startswith(HOSTED_CELL_MARK), name
        assert "start_lesson()" in text and 'MINIDIT_SOURCE = "' in text, name
    assert len({text for _, text in cells.values()}) == 1, "the set-up cells differ between notebooks"


@pytest.fixture
def device_env(monkeypatch):
    yield monkeypatch
    backend.set_device("cpu")


def test_start_lesson_honours_minidit_device(device_env, capsys):
    device_env.setenv("MINIDIT_DEVICE", "cpu")
    assert start_lesson() == "cpu" and backend.get_device() == "cpu"
    assert capsys.readouterr().out.count("\n") == 1  # one line saying which device
    device_env.delenv("MINIDIT_DEVICE")
    expected = "gpu" if backend.gpu_available() else "cpu"
    assert start_lesson() == expected  # "auto": the GPU when there is one
    assert os.environ["MINIDIT_DEVICE"] == expected  # commands the lesson starts agree
    assert ("GPU" if expected == "gpu" else "CPU") in capsys.readouterr().out


@pytest.mark.gpu
def test_start_lesson_on_the_gpu(device_env, capsys):
    if not backend.gpu_available():
        pytest.skip("no GPU (nor the CuPy stand-in)")
    device_env.setenv("MINIDIT_DEVICE", "gpu")
    assert start_lesson() == "gpu" and backend.get_device() == "gpu"
    assert "GPU" in capsys.readouterr().out


def test_without_minidit_and_without_a_source_the_cell_stops_with_one_line(tmp_path):
    _, text = first_cell(NOTEBOOKS[0])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MINIDIT_SOURCE")}
    # -I -S: no site-packages and no PYTHONPATH, so minidit is not importable, as on a fresh Colab
    r = subprocess.run([sys.executable, "-I", "-S", "-c", text], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "minidit is not installed here and MINIDIT_SOURCE is empty: set it to the git URL of your "
        "course's copy of minidit (docs/teachers_guide.md)"]
    assert list(tmp_path.iterdir()) == []  # nothing cloned, nothing written


def test_the_source_is_set_once_for_every_notebook(tmp_path):
    for p in NOTEBOOKS[:3]:
        shutil.copy(p, tmp_path / p.name)
    before = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.ipynb")}
    changed = set_install_source("https://git.example.invalid/course/minidit.git", tmp_path)
    assert len(changed) == 3
    for p in tmp_path.glob("*.ipynb"):
        nb = json.loads(p.read_text())
        kind, text = nb["cells"][0]["cell_type"], "".join(nb["cells"][0]["source"])
        assert 'MINIDIT_SOURCE = "https://git.example.invalid/course/minidit.git"  # the git URL' in text
        assert nb["cells"][1:] == before[p.name]["cells"][1:]  # nothing else changes
        assert text.replace("https://git.example.invalid/course/minidit.git", "") == \
            "".join(before[p.name]["cells"][0]["source"])
    assert set_install_source("https://git.example.invalid/course/minidit.git", tmp_path) == []
    with pytest.raises(ValueError):
        set_install_source('a"b', tmp_path)
