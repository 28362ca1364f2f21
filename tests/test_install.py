"""minidit installed as a user gets it (`pip install .`, not editable) into a fresh virtual
environment, and run from another directory: the package, its shipped models and the exercise
tooling are found without the source checkout. The wheel is built from a copy of the package
with the running interpreter, and the new environment borrows the running one's dependencies
(numpy, pillow, ...) through a .pth file. The wheel builds offline when the running environment
can build wheels (setuptools >= 70.1, or an older one with `wheel`); otherwise pip fetches a
build environment from the package index, as `pip install .` would."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.xdist_group("install")  # its module-scoped fixtures are built once, on one worker

def _run(cmd, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["MPLBACKEND"] = "Agg"
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with minidit installed from a wheel, a working folder elsewhere)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # a clean copy: an in-tree build/ folder could carry stale files
    shutil.copytree(ROOT / "minidit", src / "minidit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data", src / "data")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "wheel"), str(src)]
    _run(cmd + (["--no-build-isolation"] if _can_build_offline() else []), cwd=tmp)
    wheel = next((tmp / "wheel").glob("minidit-*.whl"))
    _run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], cwd=tmp)
    python = tmp / "venv" / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], cwd=tmp)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "borrowed_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return python, elsewhere


def _can_build_offline():
    """True when this environment's setuptools builds wheels by itself (bdist_wheel moved into
    setuptools in 70.1; before, it came with the `wheel` package)."""
    import importlib.metadata
    import importlib.util
    if importlib.util.find_spec("setuptools") is None:
        return False
    version = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2] if p.isdigit())
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.slow
def test_installed_package_is_not_the_checkout(installed):
    python, cwd = installed
    where = _run([str(python), "-c", "import minidit; print(minidit.__file__)"], cwd=cwd).strip()
    assert str(ROOT) not in where and "site-packages" in where
    listed = _run([str(python), "-c", "import minidit.training.checkpoint as c; print(*c.SHIPPED_DIRS)"], cwd=cwd)
    assert str(ROOT) not in listed.split()[0]


@pytest.mark.slow
def test_installed_package_samples_from_the_shipped_model(installed):
    python, cwd = installed
    out = _run([str(python), "-m", "minidit.sample", "--ckpt", "minidit_shapes32.npz", "--classes", "0,9",
                "--per-class", "2", "--steps", "3", "--out", "s.png", "--npz", "s.npz", "--no-progress"], cwd=cwd)
    assert "wrote s.png" in out and (cwd / "s.png").stat().st_size > 1000
    report = _run([str(python), "-m", "minidit.evaluate", "samples", "--samples", "s.npz"], cwd=cwd)
    assert report.startswith("class accuracy")  # the shipped classifier was found


@pytest.mark.slow
def test_installed_exercise_tooling(installed):
    python, cwd = installed
    listed = _run([str(python), "-m", "minidit.exercises", "list"], cwd=cwd)
    assert "linear_backward" in listed and "minidit/layers/linear.py" in listed
    r = subprocess.run([str(python), "-m", "minidit.exercises", "make", "--out", "student"], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a source checkout" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (cwd / "student").exists()


@pytest.mark.slow
def test_installed_package_has_the_imagenet_class_table(installed):
    python, cwd = installed
    out = _run([str(python), "-c", "from minidit.pretrained.sample import imagenet_class_names as n; "
                                   "names = n(); print(len(names), names[207])"], cwd=cwd)
    assert out.strip() == "1000 golden retriever"
