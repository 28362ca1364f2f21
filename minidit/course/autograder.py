"""The autograder of the exercises: every exercise graded alone, in this process, against stored
inputs and outputs, so that one wrong function is reported wrong and nothing else.

`record()` runs the reference bodies once on the cases of minidit.course.cases and keeps, per
exercise, its inputs, its outputs and every call it made to another exercise (with that call's
inputs and outputs). A student edition stores the record as numbers (RECORD_FILE); a source
checkout records on the fly. `grade_all()` then runs each exercise in turn with every OTHER
exercise replaced by a replay of its recorded calls: an exercise that calls linear_backward gets
the reference's answer for the inputs the reference passed, whatever the student's own
linear_backward does. A call with inputs the reference never passes is the caller's error and is
reported as such. A wrong result shows which output (for a backward: which input's gradient),
how many entries differ, where the error is largest, and a few entries expected against computed.
"""
import ast
import importlib
import json
import sys
import traceback
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np

from .cases import Call
from .markers import find_exercises, find_function, is_stub

RECORD_FILE = "minidit/course/exercise_data.npz"  # in a student edition, relative to its root
STUB_TEXT = "exercise: implement "  # every stub's NotImplementedError starts with this
RTOL, ATOL = 1e-6, 1e-9


class CallMismatch(Exception):
    """An exercise called another one with inputs the reference never passes."""


# Storing nested values as JSON plus arrays (no pickle) ------------------------------------------

class _Codec:
    def __init__(self, arrays=None, live=None):
        self.arrays = {} if arrays is None else arrays
        self.live = live or {}
        self._live_ids = {id(v): k for k, v in self.live.items()}

    def enc(self, o):
        if id(o) in self._live_ids:
            return {"live": self._live_ids[id(o)]}
        if isinstance(o, np.ndarray):
            key = f"a{len(self.arrays)}"
            self.arrays[key] = np.array(o)
            return {"a": key}
        if isinstance(o, np.generic):
            return {"s": o.item(), "dt": o.dtype.str}
        if o is None or isinstance(o, (bool, int, float, str)):
            return {"v": o}
        if isinstance(o, tuple) and hasattr(o, "_fields"):
            return {"nt": _class_name(o), "f": [self.enc(v) for v in o]}
        if isinstance(o, (tuple, list)):
            return {"t" if isinstance(o, tuple) else "l": [self.enc(v) for v in o]}
        if isinstance(o, dict):
            return {"d": [[self.enc(k), self.enc(v)] for k, v in o.items()]}
        if is_dataclass(o) and not isinstance(o, type):
            return {"dc": _class_name(o), "f": {f.name: self.enc(getattr(o, f.name)) for f in fields(o)}}
        raise TypeError(f"the autograder cannot store a {type(o).__name__}")

    def dec(self, s):
        if "live" in s:
            return self.live[s["live"]]
        if "a" in s:
            return np.array(self.arrays[s["a"]])  # a fresh copy every time
        if "s" in s:
            return np.dtype(s["dt"]).type(s["s"])
        if "v" in s:
            return s["v"]
        if "nt" in s:
            return _load_class(s["nt"])(*[self.dec(v) for v in s["f"]])
        if "t" in s:
            return tuple(self.dec(v) for v in s["t"])
        if "l" in s:
            return [self.dec(v) for v in s["l"]]
        if "d" in s:
            return {self.dec(k): self.dec(v) for k, v in s["d"]}
        if "dc" in s:
            return _load_class(s["dc"])(**{k: self.dec(v) for k, v in s["f"].items()})
        raise ValueError(f"unknown stored value {s!r}")


def _class_name(o):
    return f"{type(o).__module__}:{type(o).__qualname__}"


def _load_class(name):
    module, qualname = name.split(":")
    if module.split(".")[0] != "minidit":  # only our own classes are ever rebuilt
        raise ValueError(f"stored data names a class outside minidit: {name}")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


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


# Where each exercise function is bound (so that one can stand in for it everywhere) --------------

def _resolve(ex):
    obj = importlib.import_module(ex.module)
    parts = ex.name.split(".")
    for part in parts[:-1]:
        obj = getattr(obj, part)
    return obj, parts[-1]


class Bindings:
    """Every place the imported minidit holds each exercise function: module globals, dicts at
    module level (registries) and the dataclass objects in them (block designs), class methods."""

    def __init__(self, exercises):
        self.exercises = {e.name: e for e in exercises}
        self.original = {}
        self.places = {n: [] for n in self.exercises}
        for e in exercises:
            owner, attr = _resolve(e)
            self.original[e.name] = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            if isinstance(owner, type):
                self.places[e.name].append(("attr", owner, attr))
        by_id = {id(f): n for n, f in self.original.items() if "." not in n}
        for mod in [m for k, m in list(sys.modules.items()) if k == "minidit" or k.startswith("minidit.")]:
            for k, v in list(vars(mod).items()):
                self._scan(("attr", mod, k), v, by_id, depth=0)

    def _scan(self, place, v, by_id, depth):
        if id(v) in by_id:
            self.places[by_id[id(v)]].append(place)
        elif depth == 0 and isinstance(v, dict):
            for k, w in list(v.items()):
                self._scan(("item", v, k), w, by_id, 1)
        elif depth <= 1 and is_dataclass(v) and not isinstance(v, type):
            for f in fields(v):
                self._scan(("frozen", v, f.name), getattr(v, f.name), by_id, depth + 1)

    @staticmethod
    def _set(place, value):
        kind, owner, key = place
        if kind == "item":
            owner[key] = value
        elif kind == "frozen":
            object.__setattr__(owner, key, value)
        else:
            setattr(owner, key, value)

    def install(self, replacements):
        """Put the given functions in place of the named exercises; returns an undo function."""
        for name, fn in replacements.items():
            for place in self.places[name]:
                self._set(place, fn)

        def undo():
            for name in replacements:
                for place in self.places[name]:
                    self._set(place, self.original[name])
        return undo

    def current(self, name):
        """The function now bound for an exercise (the student's, in a student edition)."""
        owner, attr = _resolve(self.exercises[name])
        return owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)


# Recording the reference -------------------------------------------------------------------------

def _cases_for(name, live, seed):
    from .cases import CASES
    return CASES[name](np.random.default_rng(seed), live)


_SHARED = {}  # the live objects that no call changes (diffusions, the design), built once


def _live():
    from .cases import Collector, setup
    if not _SHARED:
        _SHARED.update(setup())
    return dict(_SHARED, hand_over=Collector())


def _seed(name):
    return sum(map(ord, name)) * 7919 % (2 ** 31)


def record(exercises=None):
    """Run the reference bodies on every case; returns (skeleton dict, arrays dict) to store."""
    exercises = exercises or find_exercises_imported()
    b = Bindings(exercises)
    arrays, skel = {}, {}
    for ex in exercises:
        live = _live()
        codec = _Codec(arrays, live)
        calls = _cases_for(ex.name, live, _seed(ex.name))
        inner = {}
        depth = [0]

        def recorder(name, fn):
            def wrapper(*args, **kwargs):
                if depth[0]:
                    return fn(*args, **kwargs)
                depth[0] += 1
                try:
                    enc_in = codec.enc([list(args), kwargs])
                    out = fn(*args, **kwargs)
                    inner.setdefault(name, []).append([enc_in, codec.enc(out)])
                    return out
                finally:
                    depth[0] -= 1
            return wrapper
        entries = []
        for call in calls:
            live["hand_over"].groups = []
            enc_in = codec.enc([list(call.args), call.kwargs])
            undo = b.install({n: recorder(n, f) for n, f in b.original.items() if n != ex.name})
            try:
                result, error = _invoke(b.original[ex.name], call, live)
            finally:
                undo()
            if error is not None:
                raise RuntimeError(f"the reference {ex.name} fails its own case: {error}")
            entries.append(dict(inputs=enc_in, expected=codec.enc(result), names=list(call.names),
                                inplace=list(call.inplace), raises=list(call.raises),
                                returns_groups=call.returns_groups))
        skel[ex.name] = dict(calls=entries, inner=inner)
    return skel, arrays


def _invoke(fn, call, live, args=None, kwargs=None):
    """Run one call; returns (what is graded, None) or (None, the exception)."""
    args = list(call.args if args is None else args)
    kwargs = dict(call.kwargs if kwargs is None else kwargs)
    try:
        with np.errstate(all="ignore"):
            out = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - every error of a student's body is reported
        if call.raises and type(e).__name__ == call.raises[0] and call.raises[1] in str(e):
            return ("raised", call.raises[0]), None
        return None, e
    if call.raises:
        return ("returned", "no error"), None
    if call.inplace:
        out = tuple(args[i] for i in call.inplace)
    if call.returns_groups:
        out = (*out, list(live["hand_over"].groups))
    return out, None


def save_record(path, skel, arrays):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, __skeleton__=np.array(json.dumps(skel)), **arrays)
    tmp.replace(path)


def load_record(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__skeleton__"}
        skel = json.loads(str(z["__skeleton__"]))
    return skel, arrays


def edition_root():
    """The folder that holds the imported minidit package."""
    import minidit
    return Path(minidit.__file__).resolve().parent.parent


def find_exercises_imported():
    return find_exercises(edition_root())


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
