"""Numerical gradient checking, as a library feature students call from notebooks.

A hand-written backward is only trusted once it agrees with central differences,
    df/dx_i ~ (f(x + h e_i) - f(x - h e_i)) / 2h,
computed in float64 on a scalar f = sum(forward(...) * dout) with a random upstream gradient
dout (an all-ones dout would hide errors that cancel in a sum).
"""
import numpy as np

from .backend import get_array_module, to_numpy


def rel_error(a, b):
    """Largest entry-wise difference, relative to the larger of the two arrays' magnitudes.

    max|a - b| / max(max|a|, max|b|). With float64 and h ~ 1e-6, a correct backward gives
    about 1e-9 to 1e-11 on a layer; 1e-3 or more means a bug. Two all-zero arrays give 0.
    """
    a = np.asarray(to_numpy(a), dtype=np.float64)
    b = np.asarray(to_numpy(b), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    diff = np.abs(a - b).max(initial=0.0)
    return 0.0 if scale == 0.0 else float(diff / scale)


def numerical_gradient(f, x, dout, h=1e-6, indices=None):
    """Central-difference gradient of sum(f() * dout) with respect to the array x.

    f takes no arguments and must read x (which is changed in place and restored). `indices`
    is an optional list of flat positions to check; by default every entry is checked. Returns
    a host float64 array shaped like x (entries not checked are NaN).
    """
    xp = get_array_module(x)
    if not x.flags.c_contiguous:
        raise ValueError("numerical_gradient perturbs x in place and needs a C-contiguous array")
    flat = x.reshape(-1)  # a view: writing flat[i] changes x
    grad = np.full(x.size, np.nan)
    positions = range(x.size) if indices is None else indices
    for i in positions:
        old = flat[i].item()
        flat[i] = old + h
        fp = float(xp.sum(f() * dout))
        flat[i] = old - h
        fm = float(xp.sum(f() * dout))
        flat[i] = old
        grad[i] = (fp - fm) / (2 * h)
    return grad.reshape(x.shape)


class GradCheckResult:
    """The table a gradient check produces: one row per checked array."""

    def __init__(self, rows, tol):
        self.rows = rows  # list of (name, shape, n_checked, error)
        self.tol = tol

    @property
    def errors(self):
        return {name: err for name, _, _, err in self.rows}

    @property
    def max_error(self):
        return max((err for _, _, _, err in self.rows), default=0.0)

    @property
    def ok(self):
        return all(err <= self.tol for _, _, _, err in self.rows)

    def __str__(self):
        w = max([4] + [len(r[0]) for r in self.rows])
        lines = [f"{'name':<{w}}  {'shape':<18} {'checked':>7}  {'max rel err':>11}  pass (tol {self.tol:.0e})"]
        for name, shape, n, err in self.rows:
            lines.append(f"{name:<{w}}  {str(tuple(shape)):<18} {n:>7}  {err:>11.2e}  {'yes' if err <= self.tol else 'NO'}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self):
        return "<pre>" + str(self) + "</pre>"

    def assert_ok(self, what="gradient check"):
        if not self.ok:
            bad = [r[0] for r in self.rows if r[3] > self.tol]
            raise AssertionError(f"{what} failed for {bad}:\n{self}")
        return self


def check_gradients(forward, backward, arrays, wrt=None, dout=None, seed=1234, h=1e-6,
                    tol=1e-7, num_checks=None, verbose=False):
    """Compare a hand-written backward with central differences, for every array in `arrays`.

    forward(**arrays) -> (out, cache); backward(dout, cache) -> dict {name: grad} or a tuple
    of grads in the order of `arrays` (None for arrays without a gradient). `wrt` limits the
    names checked (default: every array whose gradient is not None). `num_checks` samples that
    many random entries per array instead of all of them (for big models). Arrays must be
    float64 for the check to mean anything. Returns a GradCheckResult; `.assert_ok()` raises
    with the table when an error exceeds `tol`.
    """
    names = list(arrays)
    for n in names:
        a = arrays[n]
        if hasattr(a, "dtype") and a.dtype.kind == "f" and a.dtype != np.float64:
            raise ValueError(f"gradient check of {n!r} needs float64, got {a.dtype}")
    out, cache = forward(**arrays)
    xp = get_array_module(out)
    if dout is None:
        rng = np.random.default_rng(seed)
        dout = xp.asarray(rng.standard_normal(out.shape))
    grads = backward(dout, cache)
    if not isinstance(grads, dict):
        grads = dict(zip(names, grads))
    wrt = [n for n in names if grads.get(n) is not None] if wrt is None else list(wrt)
    rng = np.random.default_rng(seed + 1)
    rows = []
    for n in wrt:
        x = arrays[n]
        if grads.get(n) is None:
            raise ValueError(f"backward returned no gradient for {n!r}")
        if tuple(grads[n].shape) != tuple(x.shape):
            raise ValueError(f"gradient of {n!r} has shape {tuple(grads[n].shape)}, expected {tuple(x.shape)}")
        idx = None
        if num_checks is not None and x.size > num_checks:
            idx = rng.choice(x.size, size=num_checks, replace=False)
        num = numerical_gradient(lambda: forward(**arrays)[0], x, dout, h=h, indices=idx)
        ana = np.asarray(to_numpy(grads[n]), dtype=np.float64)
        if idx is not None:
            num, ana = num.reshape(-1)[idx], ana.reshape(-1)[idx]
        rows.append((n, x.shape, ana.size, rel_error(ana, num)))
    result = GradCheckResult(rows, tol)
    if verbose:
        print(result)
    return result
