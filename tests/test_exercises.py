"""The exercises and their autograder: 30+ exercises across DiT; a student edition that holds no
line of any removed body; every exercise graded alone, so a bug planted in one is blamed on it and
on nothing else; `make` never deletes its own source or a student's files; a teacher's edition
with the answer cells. Grading runs in-process (the whole planted-bug loop is a few seconds of CPU).
"""
import ast
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minidit.course import autograder as ag
from minidit.course import exercises as exm
from minidit.course.markers import ROOT, find_exercises, find_function, is_stub
from conftest import summary

EXERCISES = find_exercises()
if any(is_stub(find_function(ast.parse((ROOT / e.file).read_text()), e.name)) for e in EXERCISES):
    pytest.skip("this checkout is a student edition: its exercises have no reference bodies",
                allow_module_level=True)

WRONG_LINEAR_BACKWARD = """
x, w, has_b = cache
d2 = dout.reshape(-1, w.shape[1])
dx = (d2 @ w.T).reshape(x.shape)
dw = x.reshape(-1, w.shape[0]).T @ d2
dw = dw.T.reshape(dw.shape)  # the classic bug: the weight gradient read transposed
db = d2.sum(axis=0) if has_b else None
return dx, dw, db
"""


pytestmark = pytest.mark.xdist_group("exercises")  # its module-scoped fixtures are built once, on one worker


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    """A fresh student edition of this checkout (every exercise removed)."""
    out = tmp_path_factory.mktemp("ed") / "student"
    exm.make(out)
    return out


@pytest.fixture(scope="module")
def record():
    return ag.record(EXERCISES)


def test_exercises_cover_dit_and_list_groups_them_by_week(capsys):
    names = {e.name for e in EXERCISES}
    assert len(EXERCISES) >= 30
    assert {"linear_backward", "layernorm_backward", "attention_backward", "GaussianDiffusion.q_sample",
            "GaussianDiffusion.q_posterior_mean_variance", "GaussianDiffusion.p_sample",
            "GaussianDiffusion.ddim_sample", "guided_output", "adaln_block_forward", "adaln_block_backward",
            "blocks_backward", "vb_bits_and_grad", "adamw_update", "ema_step"} <= names
    for e in EXERCISES:
        assert re.match(r"^\d+(\.\d+)? \S", e.section), (e.name, e.section)  # "3.2 Patchify"
    assert exm.main(["list"]) == 0
    text = capsys.readouterr().out
    print(text)
    assert text.splitlines()[0].startswith("Week 1") and "Week 2" in text
    assert text.rstrip().endswith(f"{len(EXERCISES)} exercises")
    assert all(re.search(rf"^    {re.escape(n)}\s", text, re.M) for n in names)


def test_make_stubs_every_marked_body_and_keeps_the_rest(edition):
    for e in EXERCISES:
        node = find_function(ast.parse((edition / e.file).read_text()), e.name)
        assert is_stub(node), e.name
        message = "".join(c.value for c in ast.walk(node.body[-1]) if isinstance(c, ast.Constant))
        assert f"implement {e.name}" in message and f"paper section {e.section}" in message
        assert ast.get_docstring(node) is not None  # the docstring stays: it is the specification
    by_file = {}
    for e in EXERCISES:
        by_file.setdefault(e.file, []).append(e.name)
    for src in sorted((ROOT / "minidit").rglob("*.py")):
        rel = src.relative_to(ROOT).as_posix()
        if rel not in by_file and rel != "minidit/fused.py":
            assert (edition / rel).read_bytes() == src.read_bytes(), rel
    assert sorted(p.name for p in (edition / "tests").iterdir()) == ["test_exercises_graded.py"]
    assert not (edition / "benchmarks").exists() and (edition / ag.RECORD_FILE).is_file()
    assert "def _build" not in (edition / "minidit/fused.py").read_text()
    sheet = (edition / "EXERCISES.md").read_text()
    assert "## Week 1" in sheet and "`linear_backward`" in sheet
    with pytest.raises(FileExistsError):
        exm.make(edition)  # never writes over a student's work by accident
    with pytest.raises(ValueError, match="student edition"):
        exm.make(edition.parent / "again", root=edition)  # nor makes an edition from an edition


# The leak scan -------------------------------------------------------------------------------------

# Lines that a removed body shares with code the student is given, each with its reason.
SHARED_WITH_GIVEN_CODE = {
    "a, c_attn = _attn(P, pre, h, num_heads)": "the given ViT block designs call the same helper",
    "m, c_mlp = _mlp(P, pre, h)": "the given ViT block designs call the same helper",
    "t = self.indices(t, x.shape[0], like=x)": "the given log_variance_range makes the same call",
    "t = self.indices(t, x_t.shape[0], like=x_t)": "the given pred_xstart_from makes the same call",
    "t = self.indices(t, x_start.shape[0], like=x_start)": "the given prediction_target makes the same call",
    "centered_x = x - means": "the given discretized_gaussian_log_likelihood (the forward) computes it",
    "inv_stdv = xp.exp(-log_scales)": "the given discretized_gaussian_log_likelihood (the forward) computes it",
    "rng = np.random.default_rng(seed)": "the given combine (and the initialisers) seed the same way; "
                                          "bootstrap's docstring prescribes it",
    "mean, raw = xp.split(moments, 2, axis=1)": "the given encode_moments splits the moments the same way",
    "N, C = x_start.shape[:2]": "the given training_losses (the Gaussian diffusion's loss) reads the same shapes",
    "dloss = xp.full((N,), 1.0 / N, dtype=x_start.dtype)": "the given training_losses has the same default: "
                                                            "the gradient of the batch mean",
}
_TRIVIAL = [re.compile(p) for p in (r"^xp = get_array_module\([\w, ]*\)$", r"^return [\w, .]*$", r"^def \w+\(.*\):$",
                                    r"^[)\]}]*$", r"^else:$")]


def _norm(line):
    return re.sub(r"\s+", " ", line.strip())


def removed_lines():
    """Every line of every removed body and of the fused GPU forms -> where it comes from."""
    out = {}
    for e in EXERCISES:
        for line in exm.get_body(ROOT / e.file, e.name):
            out.setdefault(_norm(line), e.name)
    src = (ROOT / "minidit/fused.py").read_text()
    lines = src.splitlines()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.FunctionDef) and node.name not in ("enabled", "on_gpu", "decorate", "dispatch"):
            first = node.body[1 if ast.get_docstring(node) else 0].lineno
            for line in lines[first - 1:node.end_lineno]:
                out.setdefault(_norm(line), "fused." + node.name)
    # a line under 18 characters (`g = {}`, `if not need_dx:`, `# out = h @ w + b`) gives nothing away
    return {k: v for k, v in out.items()
            if len(k) >= 18 and not any(p.match(k) for p in _TRIVIAL) and k not in SHARED_WITH_GIVEN_CODE}


def leak_scan(folder):
    lines, hits = removed_lines(), []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # the stored numbers (.npz), pictures
        if path.suffix == ".ipynb":  # every cell's source and every stored output
            nb = json.loads(text)
            text = "\n".join("".join(c["source"]) + "\n" + json.dumps(c.get("outputs", []))
                             for c in nb["cells"])
        for i, line in enumerate(text.splitlines(), 1):
            if _norm(line) in lines:
                hits.append(f"{path.relative_to(folder)}:{i}: {_norm(line)}  (from {lines[_norm(line)]})")
    return hits


def test_the_student_edition_holds_no_line_of_any_removed_body(edition):
    lines = removed_lines()
    assert len(lines) > 250 and any(v.startswith("fused.") for v in lines.values())
    hits = leak_scan(edition)
    summary("course: student edition", f"leak scan of a fresh student edition: {len(lines)} solution lines searched, "
          f"{sum(1 for _ in edition.rglob('*') if _.is_file())} files, {len(hits)} hits")
    print("\n".join(hits))
    assert hits == []
    teacher = leak_scan(ROOT / "minidit")  # the scan can fail: the source itself is full of hits
    assert len(teacher) > 250


# Grading ---------------------------------------------------------------------------------------------

def _perturb(o):
    """o with 1e-3 added to its first float array or Python float (searching tuples, lists and
    dicts in order): `interval` returns a list of two floats."""
    if isinstance(o, np.ndarray) and o.dtype.kind == "f":
        return o + 1e-3, True
    if isinstance(o, float):
        return o + 1e-3, True
    items = list(o.items()) if isinstance(o, dict) else list(enumerate(o)) if isinstance(o, (tuple, list)) else []
    done, new = False, []
    for k, v in items:
        if not done:
            v, done = _perturb(v)
        new.append((k, v))
    if isinstance(o, dict):
        return dict(new), done
    if isinstance(o, tuple) and hasattr(o, "_fields"):
        return type(o)(*[v for _, v in new]), done
    if isinstance(o, (tuple, list)):
        return type(o)(v for _, v in new), done
    return o, False


def _planted(fn):
    """fn with a bug: its first float output (or, in place, its first argument) off by 1e-3."""
    def buggy(*args, **kwargs):
        out = fn(*args, **kwargs)
        if out is None:
            args[0][...] += 1e-3
            return None
        return _perturb(out)[0]
    return buggy


def test_a_bug_planted_in_each_exercise_is_blamed_on_it_alone(record):
    bindings = ag.Bindings(EXERCISES)
    clean = ag.grade_all(EXERCISES, record_data=record)
    assert all(v.kind == "pass" for v in clean.values()), {n: v.summary for n, v in clean.items()}
    rows = []
    for e in EXERCISES:
        v = ag.grade_all(EXERCISES, record_data=record, student={e.name: _planted(bindings.original[e.name])})
        others = [n for n, x in v.items() if n != e.name and x.kind != "pass"]
        rows.append((e.name, v[e.name].kind == "wrong", len(others), v[e.name].summary))
    w = max(len(r[0]) for r in rows)
    summary("course: planted bugs", f"{'exercise (bug planted)':<{w}}  blamed  others reported wrong  verdict")
    for name, blamed, others, verdict in rows:
        summary("course: planted bugs", f"{name:<{w}}  {'yes' if blamed else 'NO':<6}  {others:<21}  {verdict}")
    assert all(blamed and others == 0 for _, blamed, others, _ in rows)


def test_a_wrong_gradient_names_the_input_and_shows_entries_then_restore_passes(tmp_path, capsys):
    out = tmp_path / "student"
    exm.make(out, only=["linear_forward", "linear_backward", "attention_backward"])
    exm.restore(out, ["linear_forward"])
    exm.replace_body(out / "minidit/layers/linear.py", "linear_backward", WRONG_LINEAR_BACKWARD)
    capsys.readouterr()
    report = exm.grade(out)
    text = capsys.readouterr().out
    print(text)
    assert report.exit_code == 1
    assert re.search(r"^linear_backward\s.*WRONG gradient dw \(of input 'w'\)", text, re.M)
    assert re.search(r"^linear_forward\s.*passes", text, re.M)  # graded alone: not blamed
    assert re.search(r"^attention_backward\s.*not implemented yet", text, re.M)
    assert re.search(r"dw: \d+ of 20 entries differ; the largest error is at index \[\d, \d\]: "
                     r"expected \S+, computed \S+", text)
    assert re.search(r"^\s+dw\[\d, \d\]: expected .* computed", text, re.M)
    assert f"{len(EXERCISES) - 2} of {len(EXERCISES)} exercises pass" in text
    exm.restore(out, ["linear_backward"])
    assert exm.grade(out, ["linear_backward", "linear_forward"]).exit_code == 0


def test_a_fresh_edition_reports_every_exercise_not_implemented(edition, capsys):
    code = exm.main(["grade", str(edition)])
    text = capsys.readouterr().out
    assert code == 1
    assert f"0 of {len(EXERCISES)} exercises pass" in text
    for e in EXERCISES:
        assert re.search(rf"^{re.escape(e.name)}\s.*not implemented yet$", text, re.M), e.name
        assert f"not implemented yet: {e.name} ({e.section}) in {e.file}:" in text


def test_calling_another_exercise_with_wrong_inputs_is_the_callers_fault(tmp_path, capsys):
    out = tmp_path / "student"
    exm.make(out, only=["attention_backward"])
    body = exm.get_body(ROOT / "minidit/layers/attention.py", "attention_backward")
    wrong = [ln.replace("linear_backward(dout, c_proj)", "linear_backward(2 * dout, c_proj)") for ln in body]
    assert wrong != body
    exm.replace_body(out / "minidit/layers/attention.py", "attention_backward", wrong)
    report = exm.grade(out, ["attention_backward", "linear_backward"])
    text = capsys.readouterr().out
    assert report.verdicts["attention_backward"].kind == "wrong"
    assert report.verdicts["linear_backward"].kind == "pass"
    assert "called linear_backward(" in text and "never passes it" in text


# make and grade never touch what they do not own -------------------------------------------------

@pytest.fixture
def checkout(tmp_path):
    """A small source checkout: this package, one test, pyproject and a notebook with an answer cell."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "minidit", root / "minidit", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "test_linear.py", root / "tests")
    shutil.copy(ROOT / "pyproject.toml", root)
    (root / "notebooks").mkdir()
    def cell(kind, text, tags=()):
        return {"cell_type": kind, "metadata": {"tags": list(tags)}, "source": [text],
                **({"outputs": [], "execution_count": None} if kind == "code" else {})}
    nb = {"cells": [cell("markdown", "**Question.** Why is the gate zero at initialisation?"),
                    cell("markdown", "**Answer.** So that every block starts as the identity.", ["answer"]),
                    cell("code", "print(1)")], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (root / "notebooks" / "lesson.ipynb").write_text(json.dumps(nb))
    return root


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_make_never_deletes_its_own_source(checkout, monkeypatch, capsys):
    before = _tree(checkout)
    # as a user types it inside the checkout: this minidit is the checkout's own
    r = subprocess.run([sys.executable, "-m", "minidit.exercises", "make", "--out", ".", "--force"], cwd=checkout,
                       env=dict(os.environ, PYTHONPATH=str(checkout)), capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "source checkout" in r.stderr, r.stderr
    assert _tree(checkout) == before
    monkeypatch.chdir(checkout)
    for argv in (["make", "--out", str(checkout), "--src", str(checkout), "--force"],
                 ["make", "--out", str(checkout / "minidit" / "ed"), "--src", str(checkout), "--force"],
                 ["make", "--out", str(checkout.parent), "--src", str(checkout), "--force"]):
        with pytest.raises(SystemExit) as e:
            exm.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "source checkout" in err, err
    assert _tree(checkout) == before  # every file of the checkout intact


def test_force_never_deletes_a_students_files(edition, tmp_path, capsys):
    out = tmp_path / "ed"
    exm.make(out, only=["linear_backward"])
    exm.make(out, only=["linear_backward", "layernorm_backward"], force=True)  # an untouched edition: replaced
    assert is_stub(find_function(ast.parse((out / "minidit/layers/layernorm.py").read_text()), "layernorm_backward"))
    (out / "minidit" / "mine.py").write_text("# my notes\n")
    (out / "tests" / "test_mine.py").write_text("def test_mine(): pass\n")
    before = _tree(out)
    with pytest.raises(SystemExit) as e:
        exm.main(["make", "--out", str(out), "--force"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "minidit/mine.py" in err and "nothing was deleted" in err, err
    assert _tree(out) == before
    (out / "minidit" / "mine.py").unlink()
    (out / "tests" / "test_mine.py").unlink()
    exm.replace_body(out / "minidit/layers/linear.py", "linear_backward", "return None, None, None\n")  # work
    before = _tree(out)
    with pytest.raises(ValueError, match="minidit/layers/linear.py .*was changed"):
        exm.make(out, force=True)
    assert _tree(out) == before
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ValueError, match="cat.jpg"):
        exm.make(foreign, force=True)
    assert (foreign / "cat.jpg").read_bytes() == b"\xff\xd8"


def test_grade_refuses_a_folder_that_is_no_edition(tmp_path, capsys):
    (tmp_path / "minidit").mkdir()
    (tmp_path / "tests").mkdir()
    for folder in (tmp_path, tmp_path / "missing"):
        with pytest.raises(SystemExit) as e:
            exm.main(["grade", str(folder)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err


def test_teacher_edition_keeps_answers_and_reference_bodies_student_edition_drops_them(checkout, tmp_path, capsys):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert exm.main(["make", "--teacher", "--out", str(teacher), "--src", str(checkout)]) == 0
    assert exm.main(["make", "--out", str(student), "--src", str(checkout)]) == 0
    t_cells = json.loads((teacher / "notebooks/lesson.ipynb").read_text())["cells"]
    s_cells = json.loads((student / "notebooks/lesson.ipynb").read_text())["cells"]
    assert any("answer" in c["metadata"].get("tags", []) for c in t_cells)
    assert not any("Answer" in "".join(c["source"]) for c in s_cells)
    assert any("Question" in "".join(c["source"]) for c in s_cells)
    assert s_cells[0]["metadata"]["tags"] == ["exercise-messages"]
    for e in EXERCISES:
        assert not is_stub(find_function(ast.parse((teacher / e.file).read_text()), e.name))
        assert is_stub(find_function(ast.parse((student / e.file).read_text()), e.name))
    assert (teacher / "tests/test_linear.py").exists() and not (student / "tests/test_linear.py").exists()
    assert exm.grade(student, ["linear_forward"]).verdicts["linear_forward"].kind == "todo"
