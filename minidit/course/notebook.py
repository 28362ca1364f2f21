"""Helpers the notebooks share: showing a library function's source (a lesson displays the tested
code, never a re-typed copy), turning model-space images into pictures, laying samples out in a
mosaic, the synthetic test picture of the patchify and attention lessons, and where the
project's committed results are, and install_exercise_messages (a student edition's unfinished
exercise as one line instead of a traceback). Display only: nothing here is part of DiT.
"""
import inspect
import json
import os
import re
from pathlib import Path

import numpy as np

from ..backend import to_numpy

FAST_ENV = "MINIDIT_FAST"  # the tests run every notebook with MINIDIT_FAST=1


def fast_mode():
    """True when the notebook runs in its fast mode (the tests set MINIDIT_FAST=1)."""
    return os.environ.get(FAST_ENV) == "1"


def show_source(func, first=None, last=None):
    """Print the source of a function, class or module with the file line it starts at; with
    `first`, only the lines from the one containing `first` to the next one containing `last`
    (to the end when last is None)."""
    lines, start = inspect.getsourcelines(func)
    start = max(start, 1)  # a module starts at line 1 (inspect says 0)
    name = func.__name__ if inspect.ismodule(func) else f"{func.__module__}.{func.__qualname__}"
    if first is None:
        print(f"# {name}  (line {start})")
        print("".join(lines))
        return
    i = next(k for k, line in enumerate(lines) if first in line)
    j = len(lines) - 1 if last is None else next(k for k in range(i, len(lines)) if last in lines[k])
    print(f"# {name}, lines {start + i}-{start + j}")
    print("".join(lines[i:j + 1]))


def to_picture(x):
    """One model-space image (C, H, W) in [-1, 1], NumPy or CuPy -> (H, W, C) in [0, 1] for imshow
    (a one-channel image comes back (H, W)); values outside [-1, 1] are clipped."""
    pic = np.clip((np.asarray(to_numpy(x), dtype=np.float64).transpose(1, 2, 0) + 1) / 2, 0, 1)
    return pic[..., 0] if pic.shape[-1] == 1 else pic


def mosaic(images, per_row, gap=2):
    """uint8 images (N, H, W, C), in rows of `per_row` -> one (rows (H + gap) - gap, per_row
    (W + gap) - gap, C) picture on a white background."""
    n, H, W, C = images.shape
    rows = -(-n // per_row)
    canvas = np.full((rows * (H + gap) - gap, per_row * (W + gap) - gap, C), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, per_row)
        canvas[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = images[i]
    return canvas


def synthetic_image(size=32):
    """The test picture of notebooks 01 and 02: a graded background with a red disc, a yellow
    square and a blue triangle, (size, size, 3) in [0, 1] (shapes placed for size 32)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    im = np.stack([0.15 + 0.25 * yy / size, 0.2 + 0.1 * xx / size, 0.35 + 0.2 * xx / size], -1)
    im[(yy - 10) ** 2 + (xx - 10) ** 2 <= 6.5 ** 2] = (0.9, 0.15, 0.1)
    im[(yy >= 17) & (yy < 29) & (xx >= 3) & (xx < 15)] = (0.95, 0.8, 0.15)
    im[(yy >= 12) & (yy < 29) & (np.abs(xx - 24) <= (yy - 12) * 0.45)] = (0.2, 0.75, 0.9)
    return im


def project_root():
    """The source checkout the notebook runs in (its results/ and data/): the first folder at or
    above the working directory that holds pyproject.toml and minidit/, else the one above the
    imported package."""
    for d in (Path.cwd(), *Path.cwd().parents):
        if (d / "pyproject.toml").exists() and (d / "minidit").is_dir():
            return d
    return Path(__file__).resolve().parents[2]


# Exercise messages in a student edition's notebooks ---------------------------------------------

_PENDING = []  # the exercises a cell of this kernel stopped on, in order


def exercise_message(error):
    """One line for an exercise stub's NotImplementedError ("exercise: implement NAME (paper
    section S); ..."): the function, its file and the exercise; None for any other error."""
    import re
    m = re.search(r"exercise: implement (\S+) \(paper section ([^)]*)\)", str(error))
    if not isinstance(error, NotImplementedError) or m is None:
        return None
    name, section = m.group(1), m.group(2)
    where = ""
    tb = error.__traceback__
    while tb is not None:  # the stub's own frame: the file the student writes in
        if tb.tb_frame.f_code.co_name == name.split(".")[-1]:
            where = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if where:
        parts = Path(where).parts
        where = "/".join(parts[parts.index("minidit"):]) if "minidit" in parts else where
    if name not in _PENDING:
        _PENDING.append(name)
    return (f"exercise not done: {name} in {where or 'minidit'} (exercise {section}); write it, "
            "then run this cell again")


def install_exercise_messages(shell=None):
    """In a notebook (IPython), replace the traceback of a cell that stops on an unfinished
    exercise by one line naming the function, its file and the exercise; a later cell that fails
    while an exercise is pending shows one line "needs exercise NAME" with its own error. Any
    other error keeps its full traceback. Outside IPython it does nothing; calling it again is
    harmless. Returns nothing (so that a notebook cell calling it shows nothing)."""
    if shell is None:
        try:
            shell = get_ipython()  # noqa: F821 - defined inside IPython only
        except NameError:
            return

    def handler(self, etype, value, tb, tb_offset=None):
        if issubclass(etype, SyntaxError):
            self.showsyntaxerror()
            return None
        line = exercise_message(value)
        if line is None and _PENDING:
            text = str(value).splitlines()[0][:120] if str(value) else ""
            line = (f"needs exercise {', '.join(_PENDING)} (this cell uses what an unfinished exercise "
                    f"would compute: {etype.__name__}: {text})")
        stb = [line] if line is not None else \
            self.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
        self._showtraceback(etype, value, stb)  # the kernel's error output: one line, or the full one
        return None

    shell.set_custom_exc((Exception,), handler)


# The first cell of every lesson (issue 26): the device, and the hosted set-up ----------------

HOSTED_CELL_MARK = "# Set-up: run this cell first."
SOURCE_LINE = re.compile(r'^MINIDIT_SOURCE = ".*"(.*)$', re.M)


def start_lesson(device=None):
    """Choose the device of the lesson's arrays and say which in one line; the first cell of every
    notebook calls it. `device`, else the environment variable MINIDIT_DEVICE (the tests set cpu
    and gpu), else "auto": the GPU when CuPy finds one, the CPU otherwise. The resolved name is also
    written back to MINIDIT_DEVICE, so that a command the lesson starts uses the same device.
    Returns "cpu" or "gpu"."""
    from .. import __version__
    from ..backend import ENV_VAR, set_device
    asked = device or os.environ.get(ENV_VAR) or "auto"
    name = set_device(asked)
    os.environ[ENV_VAR] = name
    install_exercise_messages()  # a student edition: one line for a cell that needs an unfinished exercise
    where = "the GPU (CuPy)" if name == "gpu" else "the CPU (NumPy)"
    print(f"minidit {__version__}: this lesson runs on {where} ({ENV_VAR}={asked})")
    return name


def set_install_source(source, notebooks=None):
    """Write `source` (where a hosted notebook gets minidit: a git URL or a folder git can clone) into
    the MINIDIT_SOURCE line of the first cell of every notebook, so a teacher sets it once for the
    whole course. Returns the notebooks changed. Outputs stay stripped: only that line changes."""
    if '"' in source or "\n" in source:
        raise ValueError(f"not a usable install source: {source!r}")
    folder = Path(notebooks) if notebooks else project_root() / "notebooks"
    changed = []
    for path in sorted(folder.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        cell = nb["cells"][0] if nb["cells"] else None
        text = "".join(cell["source"]) if cell else ""
        if cell is None or cell["cell_type"] != "code" or not text.startswith(HOSTED_CELL_MARK):
            raise ValueError(f"{path.name}: the first cell is not the set-up cell")
        new = SOURCE_LINE.sub(lambda m: f'MINIDIT_SOURCE = "{source}"{m.group(1)}', text, count=1)
        if new != text:
            cell["source"] = new.splitlines(keepends=True)
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed.append(path)
    return changed
