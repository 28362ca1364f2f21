"""The autograder of the exercises: every exercise graded alone, in this process, against stored
inputs and outputs, so that one wrong function is reported wrong and nothing else.

`record()` (minidit.course.recording) runs the reference bodies once on the cases of
minidit.course.cases and keeps, per exercise, its inputs, its outputs and every call it made to
another exercise (with that call's inputs and outputs). A student edition stores the record as numbers (RECORD_FILE); a source
checkout records on the fly. `grade_all()` then runs each exercise in turn with every OTHER
exercise replaced by a replay of its recorded calls: an exercise that calls linear_backward gets
the reference's answer for the inputs the reference passed, whatever the student's own
linear_backward does. A call with inputs the reference never passes is the caller's error and is
reported as such. A wrong result shows which output (for a backward: which input's gradient),
how many entries differ, where the error is largest, and a few entries expected against computed.
"""
import ast
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cases import Call
from .markers import find_function, is_stub
# the record of the reference; the names are kept importable from here (the student edition's test uses them)
from .recording import (RECORD_FILE, Bindings, _Codec, _invoke, _live, edition_root,  # noqa: F401
                        find_exercises_imported, load_record, record, save_record)

STUB_TEXT = "exercise: implement "  # every stub's NotImplementedError starts with this
RTOL, ATOL = 1e-6, 1e-9


class CallMismatch(Exception):
    """An exercise called another one with inputs the reference never passes."""


# Comparing a computed value with the expected one ------------------------------------------------

def compare(expected, got, where="output"):
    """None when `got` matches `expected` (arrays to RTOL/ATOL), else a list of message lines."""
    if isinstance(expected, np.ndarray) or isinstance(got, np.ndarray):
        try:
            g = np.asarray(_host(got), dtype=np.float64) if got is not None else None
        except (TypeError, ValueError):
            g = None
        if g is None or not isinstance(expected, np.ndarray):
            return [f"{where}: expected an array of shape {np.shape(expected)}, computed {_kind(got)}"]
        e = np.asarray(expected, dtype=np.float64)
        if g.shape != e.shape:
            return [f"{where}: expected shape {e.shape}, computed shape {g.shape}"]
        bad = ~np.isclose(g, e, rtol=RTOL, atol=ATOL * max(1.0, float(np.abs(e).max(initial=0))))
        if not bad.any():
            return None
        err = np.where(np.isfinite(g), np.abs(g - e), np.inf)
        worst = np.unravel_index(int(np.argmax(err)), e.shape)
        lines = [f"{where}: {int(bad.sum())} of {e.size} entries differ; the largest error is at "
                 f"index {list(map(int, worst))}: expected {e[worst]:.6g}, computed {g[worst]:.6g}"]
        idx = [tuple(map(int, i)) for i in np.argwhere(bad)[:4]]
        lines += [f"    {where}[{', '.join(map(str, i))}]: expected {e[i]: .6g}  computed {g[i]: .6g}" for i in idx]
        return lines
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [f"{where}: expected a dict with keys {sorted(map(str, expected))}, computed {_kind(got)}"]
        if set(expected) != set(got):
            miss, extra = sorted(set(expected) - set(got), key=str), sorted(set(got) - set(expected), key=str)
            return [f"{where}: keys differ (missing {miss}, unexpected {extra})"]
        for k in expected:
            if (r := compare(expected[k], got[k], f"{where}[{k!r}]")):
                return r
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return [f"{where}: expected {len(expected)} values, computed {_kind(got)}"]
        names = getattr(expected, "_fields", None)
        for i, (e, g) in enumerate(zip(expected, got)):
            if (r := compare(e, g, f"{where}.{names[i]}" if names else f"{where}[{i}]")):
                return r
        return None
    if isinstance(expected, (float, np.floating)) and isinstance(got, (int, float, np.number)):
        return None if np.isclose(float(got), float(expected), rtol=RTOL, atol=ATOL) else \
            [f"{where}: expected {float(expected):.6g}, computed {float(got):.6g}"]
    if expected is None or isinstance(expected, (bool, int, str, np.integer, np.bool_)):
        return None if type(got) is type(expected) and got == expected or \
            (isinstance(got, (int, np.integer)) and isinstance(expected, (int, np.integer))
             and not isinstance(got, bool) and got == expected) else \
            [f"{where}: expected {expected!r}, computed {_kind(got) if got is None else repr(got)[:60]}"]
    # a live object (a diffusion, a design, a function): the same kind of thing
    return None if type(got) is type(expected) else [f"{where}: expected {_kind(expected)}, computed {_kind(got)}"]


def _host(x):
    return x.get() if hasattr(x, "get") and not isinstance(x, (dict, np.ndarray)) else x


def _kind(x):
    if x is None:
        return "None"
    if hasattr(x, "shape"):
        return f"an array of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)}"
    return f"a {type(x).__name__}"


def _describe_args(args, kwargs):
    def one(a):
        if hasattr(a, "shape"):
            return f"array{tuple(a.shape)}"
        if isinstance(a, (tuple, list, dict)):
            return f"{type(a).__name__}({len(a)})"
        if callable(a) or hasattr(a, "__dict__"):  # a live object: its name or its type
            return getattr(a, "__name__", type(a).__name__)
        return repr(a)
    return ", ".join([one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()])


# Grading ------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    """The autograder's word on one exercise: kind is pass, todo or wrong."""
    kind: str
    summary: str
    details: list = field(default_factory=list)


def _where_raised(e, root):
    """'file:line: source' of the deepest frame of the traceback inside the minidit package."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "minidit" in Path(f.filename).parts and "course" not in Path(f.filename).parts]
    if not frames:
        return ""
    f = frames[-1]
    try:
        rel = Path(f.filename).resolve().relative_to(root).as_posix()
    except ValueError:
        rel = f.filename
    return f"{rel}:{f.lineno}: {(f.line or '').strip()}"


def grade_one(ex, student_fn, bindings, skel, arrays, root):
    """Grade one exercise with every other exercise replayed from the record."""
    rec = skel.get(ex.name)
    if rec is None:
        return Verdict("wrong", "no stored case (regenerate the edition)", [f"{ex.name}: no stored case"])
    live = _live()
    codec = _Codec(arrays, live)
    inner = {n: [(None, c[0], c[1]) for c in calls] for n, calls in rec["inner"].items()}

    def replay(name):
        def stand_in(*args, **kwargs):
            entries = inner.get(name, [])
            closest = None
            for i, (decoded, enc_in, enc_out) in enumerate(entries):
                if decoded is None:
                    decoded = codec.dec(enc_in)
                    entries[i] = (decoded, enc_in, enc_out)
                diff = compare(decoded[1], kwargs, "keyword arguments") if set(decoded[1]) == set(kwargs) else \
                    [f"keyword arguments {sorted(kwargs)} (the reference passes {sorted(decoded[1])})"]
                diff = diff or compare(tuple(decoded[0]), tuple(args), "arguments")
                if diff is None:
                    return codec.dec(enc_out)
                closest = closest or diff
            raise CallMismatch(
                f"{ex.name} called {name}({_describe_args(args, kwargs)}) with inputs the reference "
                f"never passes it" + (f"; the nearest reference call differs: {closest[0]}" if closest else
                                      "; the reference does not call it at all"))
        return stand_in

    undo = bindings.install({n: replay(n) for n in bindings.original if n != ex.name})
    try:
        for k, entry in enumerate(rec["calls"]):
            live["hand_over"].groups = []
            args, kwargs = codec.dec(entry["inputs"])
            call = Call(args=(), kwargs={}, names=tuple(entry["names"]), inplace=tuple(entry["inplace"]),
                        raises=tuple(entry["raises"]), returns_groups=entry["returns_groups"])
            got, error = _invoke(student_fn, call, live, args, kwargs)
            head = f"{ex.name}({_describe_args(args, kwargs)})"
            if error is not None:
                if isinstance(error, NotImplementedError) and STUB_TEXT in str(error):
                    return Verdict("todo", "not implemented yet",
                                   [f"not implemented yet: {ex.name} ({ex.section}) in {ex.file}:{ex.line}"])
                if isinstance(error, CallMismatch):
                    return Verdict("wrong", f"WRONG: calls another exercise with wrong inputs (case {k + 1})",
                                   [f"{head}:", f"  {error}"])
                where = _where_raised(error, root)
                return Verdict("wrong", f"WRONG: raises {type(error).__name__} (case {k + 1})",
                               [f"{head} raised {type(error).__name__}: {str(error)[:200]}",
                                *([f"  at {where}"] if where else [])])
            expected = codec.dec(entry["expected"])
            names = call.names + (("handed over",) if call.returns_groups else ())
            diff = _compare_outputs(expected, got, names, call)
            if diff:
                first = diff[0].split(":")[0]
                what = _what(first, call)
                return Verdict("wrong", f"WRONG {what} (case {k + 1} of {len(rec['calls'])})",
                               [f"{head}:", *("  " + d for d in diff)])
    finally:
        undo()
    return Verdict("pass", f"passes ({len(rec['calls'])} case{'s' if len(rec['calls']) > 1 else ''})")


def _what(first, call):
    if call.raises:
        return "error handling"
    base = first.split("[")[0].split(".")[0]
    if base.startswith("d") and len(base) > 1:
        return f"gradient {base} (of input {base[1:]!r})"
    return f"value of {base}"


def _compare_outputs(expected, got, names, call):
    if call.raises:
        if got != expected:
            return [f"expected {call.raises[0]} with {call.raises[1]!r} in its message; the function "
                    f"{'returned without an error' if got[0] == 'returned' else 'raised another error'}"]
        return None
    if len(names) > 1 or call.inplace or call.returns_groups:
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return [f"expected {len(expected)} return values ({', '.join(names)}), computed {_kind(got)}"]
        for n, e, g in zip(names, expected, got):
            if (r := compare(e, g, n)):
                return r
        return None
    return compare(expected, got, names[0] if names else "output")


def grade_all(exercises, names=None, record_data=None, student=None):
    """Verdicts {name: Verdict} for the chosen exercises of the imported minidit.

    record_data: (skeleton, arrays) from `record`/`load_record`; student: {name: function} to
    grade instead of the bound ones (the planted-bug test)."""
    import minidit
    root = Path(minidit.__file__).resolve().parent.parent
    bindings = Bindings(exercises)
    skel, arrays = record_data
    chosen = [e for e in exercises if names is None or e.name in names]
    out = {}
    for ex in chosen:
        fn = (student or {}).get(ex.name) or bindings.current(ex.name)
        out[ex.name] = grade_one(ex, fn, bindings, skel, arrays, root)
    return out


# The report ---------------------------------------------------------------------------------------

@dataclass
class GradeReport:
    verdicts: dict
    text: str
    exit_code: int


def format_report(edition, chosen, verdicts):
    w = max([8] + [len(e.name) for e in chosen])
    s = max([13] + [len(e.section) for e in chosen])
    lines = [f"minidit autograder: {edition} ({len(chosen)} exercises, each graded alone)", "",
             f"{'exercise':<{w}}  {'paper section':<{s}}  status", f"{'-' * w}  {'-' * s}  {'-' * 40}"]
    lines += [f"{e.name:<{w}}  {e.section:<{s}}  {verdicts[e.name].summary}" for e in chosen]
    n_ok = sum(verdicts[e.name].kind == "pass" for e in chosen)
    lines += ["", f"{n_ok} of {len(chosen)} exercises pass."]
    wrong = [verdicts[e.name] for e in chosen if verdicts[e.name].kind == "wrong"]
    todo = [verdicts[e.name] for e in chosen if verdicts[e.name].kind == "todo"]
    if wrong:
        lines += ["", "Wrong (each graded with the reference answers of every other exercise, so the bug is in it):"]
        for v in wrong:
            lines += [""] + ["  " + d for d in v.details]
    if todo:
        lines += ["", "Not implemented yet (write the body, then grade again):"]
        lines += ["  " + v.details[0] for v in todo]
    return "\n".join(lines)


def stubs_in(root, exercises):
    return {e.name for e in exercises if is_stub(find_function(ast.parse((Path(root) / e.file).read_text()), e.name))}
