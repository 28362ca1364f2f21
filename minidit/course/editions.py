"""Writing an edition of minidit (minidit.course.exercises `make`): the student edition (exercise
bodies replaced by stubs, the fused GPU forms, tests, benchmarks/, docs/, notebook outputs and answer
cells left out, the autograder's record stored as numbers, one test per exercise) or the teacher's
edition; the manifest of what make wrote and the checks that keep --out and --force from touching
anything else; the exercise sheet and the list of exercises, grouped by the weeks of the course.
One module of about 330 lines: each part is a step of `make`, in the order it runs.
"""
import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from . import autograder
from .bodies import replace_body, stub_body
from .markers import ROOT, find_exercises, find_function, is_stub, select
from .notebook import HOSTED_CELL_MARK

COPIED = ("minidit", "tests", "notebooks", "benchmarks", "docs", "data", "results", "pyproject.toml", "README.md",
          "requirements.txt", "LICENSE")
# benchmarks/ holds a PyTorch DiT (the parity reference) and docs/ the formulas: only the teacher's edition has them
TEACHER_ONLY = ("benchmarks", "docs")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache")


def _warn_if_dirty(root):
    try:
        r = subprocess.run(["git", "status", "--porcelain", "--", *COPIED], cwd=root,
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return
    if r.returncode == 0 and r.stdout.strip():
        print(f"warning: {root} has uncommitted changes; they will be in the student edition:\n"
              + textwrap.indent(r.stdout.rstrip(), "  "), file=sys.stderr)


def check_checkout(root):
    """`root` as a Path if it is a source checkout of minidit (package, tests, pyproject.toml)."""
    root = Path(root)
    if not ((root / "minidit").is_dir() and (root / "tests").is_dir() and (root / "pyproject.toml").is_file()):
        raise ValueError(f"{root} is not a source checkout of minidit (it needs minidit/, tests/ and "
                         "pyproject.toml; an installed package has no tests): clone the repository and "
                         "run the command there, or pass --src CHECKOUT")
    return root


MANIFEST = ".minidit-edition.json"  # what `make` wrote: path -> sha256, so --force deletes only that
_DISPOSABLE = ("__pycache__", ".pytest_cache", ".ipynb_checkpoints")  # caches a run leaves, never a student's work
STUDENT_FUSED = '''"""The fused GPU kernels are not part of the student edition: on a GPU, as on the CPU, the
functions you write are the ones that run (`enabled` is always False here)."""
ENV_VAR = "MINIDIT_FUSED"


def enabled(x):
    """Always False in the student edition."""
    return False


def on_gpu(fused_form):
    """In the student edition the decorated function itself runs everywhere."""
    def decorate(fn):
        return fn
    return decorate


def _absent(*args, **kwargs):
    raise NotImplementedError("the fused GPU forms are not part of the student edition")


kernels = gelu_forward = gelu_backward = softmax_backward = layernorm_forward = _absent
layernorm_backward = modulate_forward = gated_residual_forward = adamw_update = ema_update = _absent
'''
STUDENT_TEST = '''"""The exercises, one test each: the autograder grades every exercise alone against stored
inputs and outputs (minidit/course/exercise_data.npz). `python -m minidit.exercises grade .`
prints the same verdicts as a table."""
import pytest

from minidit.course import autograder

EXERCISES = autograder.find_exercises_imported()
RECORD = autograder.load_record(autograder.edition_root() / autograder.RECORD_FILE)


@pytest.mark.parametrize("name", [e.name for e in EXERCISES])
def test_exercise(name):
    verdict = autograder.grade_all(EXERCISES, [name], RECORD)[name]
    assert verdict.kind == "pass", "\\n".join([verdict.summary, *verdict.details])
'''


def _sha(path):
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _inside(a, b):
    """True when a is b or lies inside b (both resolved)."""
    return a == b or b in a.parents


def _check_out(out, root, force):
    """Refuse an --out that would touch the source checkout or anything that make did not write."""
    out_r, root_r = out.resolve(), root.resolve()
    if _inside(out_r, root_r) or _inside(root_r, out_r):
        what = ("the source checkout" if out_r == root_r else "inside the source checkout"
                if _inside(out_r, root_r) else "a folder that contains the source checkout")
        raise ValueError(f"--out {out} is {what} {root}: give a folder outside it "
                         "(make never writes into its own source)")
    import minidit
    pkg = Path(minidit.__file__).resolve().parent.parent
    if _inside(pkg, out_r):
        raise ValueError(f"--out {out} contains the running minidit package ({pkg}): give another folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return {}
    if not force:
        raise FileExistsError(f"{out} is not empty (use --force to replace an edition that make wrote there)")
    manifest = out / MANIFEST
    if not manifest.is_file():
        first = next(iter(sorted(out.iterdir())))
        raise ValueError(f"--force: {out} holds files that make did not write (first: {first.name}); "
                         "nothing was deleted")
    import json
    try:
        written = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--force: {manifest} is not a manifest make wrote ({e}); nothing was deleted")
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if any(part in _DISPOSABLE for part in path.relative_to(out).parts) or path.is_dir() or rel == MANIFEST:
            continue
        if rel not in written:
            raise ValueError(f"--force: {out} holds a file that make did not write: {rel}; nothing was deleted")
        if _sha(path) != written[rel]:
            raise ValueError(f"--force: {rel} in {out} was changed since make wrote it (a student's work?); "
                             "nothing was deleted")
    return written


def _remove_written(out, written):
    for rel in written:
        (out / rel).unlink(missing_ok=True)
    for d in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if d.name in _DISPOSABLE:
            shutil.rmtree(d, ignore_errors=True)
        elif not any(d.iterdir()):
            d.rmdir()
    (out / MANIFEST).unlink(missing_ok=True)


# Results first: the student edition's start-here notebook keeps the outputs of its executed lesson
# (lessons/, made with the reference code), so that a student sees the trained model's samples and a
# denoising trajectory before writing the layers that running it again needs. It shows no exercise's
# source, and the leak scan reads it with every other file of the edition.
RESULTS_FIRST = ("00_start_here.ipynb",)


def _executed_lesson(src, root):
    """The executed copy of notebook `src` in root/lessons, with the notebook's current prose, when it
    ran the notebook's current code cells (minidit.course.site's stamp), else None."""
    import json
    from .site import with_current_prose
    copy = root / "lessons" / src.name
    if not copy.is_file():
        return None
    return with_current_prose(json.loads(copy.read_text()), json.loads(src.read_text()))


def _clean_notebook(src, dst, teacher, root=ROOT):
    """Copy a notebook without its outputs; the student edition also drops the cells tagged "answer"
    (and keeps the outputs of the RESULTS_FIRST notebooks' executed lessons where they are current)."""
    import json
    nb = json.loads(src.read_text())
    executed = None if teacher or src.name not in RESULTS_FIRST else _executed_lesson(src, root)
    if executed is not None:
        nb = executed
        nb["metadata"].pop("minidit", None)
    cells = []
    for c in nb["cells"]:
        if not teacher and "answer" in c.get("metadata", {}).get("tags", []):
            continue
        if c["cell_type"] == "code" and executed is None:
            c["outputs"], c["execution_count"] = [], None
        cells.append(c)
    hosted = bool(cells) and "".join(cells[0]["source"]).startswith(HOSTED_CELL_MARK)
    if not teacher and not hosted:
        # one line per unfinished exercise instead of a traceback (minidit.course.notebook); a lesson
        # whose first cell is the hosted set-up gets it from there (start_lesson), after minidit is
        # installed, which a cell put before it could not count on
        cells.insert(0, {"cell_type": "code", "execution_count": None, "id": "exercise-messages",
                         "metadata": {"tags": ["exercise-messages"]}, "outputs": [],
                         "source": ["from minidit.course.notebook import install_exercise_messages\n",
                                    "install_exercise_messages()  # an unfinished exercise: one line, no traceback"]})
    nb["cells"] = cells
    dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def make(out, only=None, root=ROOT, force=False, teacher=False):
    """Write a student edition to `out`: the package, notebooks and a test per exercise, with the
    bodies of the chosen exercises (default: all; [] gives a full solution edition) replaced by
    stubs, the fused GPU forms left out, notebook outputs and answer cells removed, and the
    autograder's stored inputs and outputs. teacher=True writes the teacher's edition instead:
    reference bodies, the repository's tests, and the notebooks with their answer cells.
    Returns the exercises removed (none for the teacher's edition)."""
    root, out = check_checkout(root), Path(out)
    exercises = find_exercises(root)
    chosen = [] if teacher else select(exercises, only)
    for ex in exercises:
        if is_stub(find_function(ast.parse((root / ex.file).read_text()), ex.name)):
            raise ValueError(f"{root} is itself a student edition ({ex.name} has no reference body); "
                             "make the edition from the teacher's checkout")
    old = _check_out(out, root, force)
    _warn_if_dirty(root)
    record = None if teacher else _record_from(root)
    if old:
        _remove_written(out, old)
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src, dst = root / name, out / name
        if name == "tests" and not teacher:
            dst.mkdir(exist_ok=True)
            (dst / "test_exercises_graded.py").write_text(STUDENT_TEST)
        elif name == "notebooks" and src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.ipynb", *_DISPOSABLE, "*.pyc"))
            for nb in sorted(src.rglob("*.ipynb")):
                if ".ipynb_checkpoints" not in nb.parts:
                    (dst / nb.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                    _clean_notebook(nb, dst / nb.relative_to(src), teacher, root)
        elif name in TEACHER_ONLY and not teacher:
            continue
        elif src.is_dir():
            shutil.copytree(src, dst, ignore=_IGNORE)
        elif src.exists():
            shutil.copy2(src, dst)
    if not teacher:
        (out / "minidit" / "fused.py").write_text(STUDENT_FUSED)
        autograder.save_record(out / autograder.RECORD_FILE, *record)
        for ex in chosen:
            replace_body(out / ex.file, ex.name, stub_body(ex))
    (out / "EXERCISES.md").write_text(_student_sheet(chosen) if not teacher else _teacher_sheet(exercises))
    import json
    files = {p.relative_to(out).as_posix(): _sha(p) for p in sorted(out.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    (out / MANIFEST).write_text(json.dumps({"kind": "teacher" if teacher else "student", "files": files}, indent=0))
    return chosen


def _record_from(root):
    """The autograder's record of the reference bodies in `root` (in this process when root is the
    imported package's checkout, else in a subprocess that imports root's minidit)."""
    import minidit
    if Path(minidit.__file__).resolve().parent.parent == Path(root).resolve():
        return autograder.record()
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "record.npz"
        code = ("import sys; from minidit.course import autograder as a; "
                "a.save_record(sys.argv[1], *a.record())")
        r = subprocess.run([sys.executable, "-c", code, str(target)], cwd=root, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(Path(root).resolve())))
        if r.returncode != 0:
            raise RuntimeError(f"recording the reference in {root} failed: {r.stderr.strip().splitlines()[-1:]}")
        return autograder.load_record(target)


WEEKS = (("Week 1: the transformer (layers, the adaLN-Zero block, the model's backward)", ("3.2",)),
         ("Week 2: diffusion, sampling, guidance, the training step, the latent space and the experiments' "
          "error bars", ("3.1", "4", "5")))


def week_of(ex):
    """The week of the two-week plan (docs/teachers_guide.md) an exercise belongs to, by its section."""
    for title, prefixes in WEEKS:
        if any(ex.section.split(" ")[0] == p or ex.section.startswith(p + " ") for p in prefixes):
            return title
    return "Other"


def _grouped(exercises):
    """[(week title, [(section, [exercises])])] in the order of WEEKS, sections in first-seen order."""
    out = []
    for title in [w for w, _ in WEEKS] + ["Other"]:
        sections = {}
        for e in exercises:
            if week_of(e) == title:
                sections.setdefault(e.section, []).append(e)
        if sections:
            out.append((title, list(sections.items())))
    return out


def _student_sheet(chosen):
    lines = ["# Exercises", "", "Write the body of each function below (its docstring says what it takes "
             "and returns), then run the autograder from this folder. It grades every exercise alone, "
             "with the reference answers of all the others, so a verdict is about that function only.", "",
             "```bash", "python -m minidit.exercises grade .                      # every exercise",
             "python -m minidit.exercises grade . -k linear_backward   # one exercise (or a file: -k linear)",
             "```"]
    for title, sections in _grouped(chosen):
        lines += ["", f"## {title}", "", "| function | file | paper section |", "|---|---|---|"]
        lines += [f"| `{e.name}` | `{e.file}` | {s} |" for s, exs in sections for e in exs]
    return "\n".join(lines) + "\n"


def _teacher_sheet(exercises):
    return ("# Teacher's edition\n\nThe reference bodies of every exercise, the repository's tests and the "
            "notebooks with their answer cells (tagged \"answer\"). Make the students' folder with "
            "`python -m minidit.exercises make --out DIR` from a clean checkout; never hand out this one.\n\n"
            + _student_sheet(exercises).split("\n", 2)[2])


def format_list(exercises):
    w = max([8] + [len(e.name) for e in exercises])
    f = max([4] + [len(f"{e.file}:{e.line}") for e in exercises])
    lines = []
    for title, sections in _grouped(exercises):
        lines += [title]
        for section, exs in sections:
            lines += [f"  {section}"]
            lines += [f"    {e.name:<{w}}  {e.file}:{e.line}" for e in exs]
    return "\n".join(lines) + f"\n{len(exercises)} exercises"

