"""The autograder's record of the reference: every exercise's reference body run once on its cases
(minidit.course.cases), with its inputs, its outputs and every call it made to another exercise.

`record()` keeps, per exercise, the encoded calls; `save_record`/`load_record` store them as JSON
plus arrays in one .npz (no pickle), which a student edition ships as RECORD_FILE. `Bindings` finds
every place the imported minidit holds an exercise function, so that a recorder here, and a replay
in minidit.course.autograder, can stand in for it everywhere.
"""
import importlib
import json
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np

from .markers import find_exercises

RECORD_FILE = "minidit/course/exercise_data.npz"  # in a student edition, relative to its root


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
