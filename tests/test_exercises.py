"""The exercises and their autograder: markers are found, `make` removes exactly the marked bodies,
and the autograder says which exercise is missing, which layer and input is wrong, and when a
restored reference body passes. Each grade runs a reduced set of test files (a few seconds)."""
import ast
import re

import pytest

from minidit.course import exercises as exm
from minidit.course.autograder import diagnose
from minidit.course.markers import ROOT, Exercise, find_exercises, find_function, is_stub

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


def _without_bodies(path, names):
    """The file's lines with the bodies (after the docstring) of the named functions cut out."""
    lines = path.read_text().splitlines(keepends=True)
    tree = ast.parse("".join(lines))
    for first, last, _ in sorted((exm._body_span(find_function(tree, n), n) for n in names), reverse=True):
        del lines[first - 1:last]
    return lines


def test_markers_name_a_paper_section_and_a_test_file():
    names = {e.name for e in EXERCISES}
    assert len(EXERCISES) >= 15
    assert {"linear_backward", "layernorm_backward", "sdpa_backward", "attention_backward",
            "modulate_backward", "gated_residual_backward", "unpatchify_hwc_backward",
            "normal_kl_grad_logvar2"} <= names
    for e in EXERCISES:
        assert re.match(r"^\d+(\.\d+)? \S", e.section), (e.name, e.section)  # "3.2 Patchify"
        assert e.tests and all((ROOT / t).exists() for t in e.tests), e.name
    assert next(e for e in EXERCISES if e.name == "linear_backward").tests == ("tests/test_linear.py",)
    assert "linear_backward" in exm.format_list(EXERCISES)


def test_a_marker_must_sit_directly_above_a_def(tmp_path):
    (tmp_path / "minidit").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "minidit" / "f.py").write_text("# exercise: 3.2 Patchify\n\ndef f(x):\n    return x\n")
    with pytest.raises(ValueError, match="not directly above a def"):
        find_exercises(tmp_path)


def test_make_removes_exactly_the_marked_bodies(tmp_path):
    out = tmp_path / "student"
    chosen = exm.make(out)
    assert [e.name for e in chosen] == [e.name for e in EXERCISES]
    by_file = {}
    for e in EXERCISES:
        by_file.setdefault(e.file, []).append(e.name)
        node = find_function(ast.parse((out / e.file).read_text()), e.name)
        assert is_stub(node), e.name
        message = "".join(c.value for c in ast.walk(node.body[-1]) if isinstance(c, ast.Constant))
        assert f"implement {e.name}" in message and f"paper section {e.section}" in message
        assert e.tests[0] in message
        assert ast.get_docstring(node) is not None  # the docstring stays: it is the specification
    for src in sorted((ROOT / "minidit").rglob("*.py")) + sorted((ROOT / "tests").glob("*.py")):
        rel = src.relative_to(ROOT).as_posix()
        if rel in by_file:  # outside the marked bodies, byte for byte the same
            assert _without_bodies(out / rel, by_file[rel]) == _without_bodies(src, by_file[rel]), rel
            assert (out / rel).read_bytes() != src.read_bytes()
        else:
            assert (out / rel).read_bytes() == src.read_bytes(), rel
    assert "linear_backward" in (out / "EXERCISES.md").read_text()
    with pytest.raises(FileExistsError):
        exm.make(out)  # never writes over a student's work by accident
    with pytest.raises(ValueError, match="student edition"):
        exm.make(tmp_path / "again", root=out)  # nor makes an edition from an edition
    exm.restore(out, None)  # every reference body back: the files are the source again
    for rel in by_file:
        assert (out / rel).read_bytes() == (ROOT / rel).read_bytes(), rel


def test_fresh_edition_fails_the_autograder_with_named_exercises(tmp_path, capsys):
    out = tmp_path / "student"
    exm.make(out)
    code = exm.main(["grade", str(out), "-k", "linear_backward,modulate"])
    text = capsys.readouterr().out
    print(text)
    assert code == 1
    for name in ("linear_backward", "modulate_forward", "modulate_backward", "gated_residual_backward"):
        assert re.search(rf"^{name}\s.*not implemented yet$", text, re.M), name
        assert f"not implemented yet: {name} (3.2 DiT block design)" in text
    assert "0 of 4 exercises pass" in text


def test_wrong_gradient_names_the_layer_and_the_input_then_restore_passes(tmp_path):
    out = tmp_path / "student"
    exm.make(out, only=["linear_backward"])
    exm.replace_body(out / "minidit/layers/linear.py", "linear_backward", WRONG_LINEAR_BACKWARD)
    report = exm.grade(out, ["linear_backward"])
    v = report.verdicts["linear_backward"]
    assert report.exit_code == 1 and v.kind == "wrong"
    assert v.summary == "WRONG gradient for input 'w' in check 'linear'"
    detail = "\n".join(v.details)
    assert "tests/test_linear.py::test_linear_gradcheck" in detail
    assert re.search(r"^\s*w\s.*NO$", detail, re.M) and re.search(r"^\s*x\s.*yes$", detail, re.M)

    exm.restore(out, ["linear_backward"])
    assert (out / "minidit/layers/linear.py").read_bytes() == (ROOT / "minidit/layers/linear.py").read_bytes()
    report = exm.grade(out, ["linear_backward"])
    assert report.exit_code == 0 and report.verdicts["linear_backward"].kind == "pass"


def _rec(nodeid, calls, outcome="failed", kind="gradcheck", **kw):
    rec = dict(nodeid=nodeid, file=nodeid.split("::")[0], outcome=outcome, kind=kind,
               calls={n: i for i, n in enumerate(calls)})
    rec.update(dict(what=nodeid, bad=["w"], worst=1.0, tol=1e-7, table="w NO") if kind == "gradcheck" else kw)
    return rec


def test_diagnose_blames_the_layer_whose_own_check_fails():
    """A wrong linear_backward also breaks attention's check: attention waits on it, and the
    exercises of a test blocked by a stub wait on the stub."""
    ex = [Exercise(n, "minidit/layers/x.py", 1, "3.2 DiT block design", ("tests/test_x.py",))
          for n in ("linear_forward", "linear_backward", "attention_backward", "sdpa_backward", "silu_backward")]
    records = [
        _rec("tests/test_linear.py::values", ["linear_forward"], outcome="passed", kind=None),
        _rec("tests/test_linear.py::grad", ["linear_forward", "linear_backward"]),
        _rec("tests/test_attention.py::sdpa", ["sdpa_backward"], outcome="passed", kind=None),
        _rec("tests/test_attention.py::grad", ["linear_forward", "sdpa_backward", "linear_backward",
                                               "attention_backward"]),
        _rec("tests/test_x.py::t", ["linear_forward", "silu_backward"], kind="notimpl",
             notimpl="silu_backward"),
    ]
    v = diagnose(ex, records, stubs={"silu_backward"})
    assert v["linear_backward"].kind == "wrong" and "'w'" in v["linear_backward"].summary
    assert v["attention_backward"].kind == "waiting" and "linear_backward" in v["attention_backward"].summary
    assert v["linear_forward"].kind == "waiting"
    assert v["sdpa_backward"].kind == "waiting"
    assert v["silu_backward"].kind == "todo"
