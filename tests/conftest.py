"""Shared fixtures: the backend is one more test parameter (cpu always, gpu when present)."""
import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from minidit import backend  # noqa: E402

_GPU = backend.gpu_available()


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def xp(request):
    """The array module to test with: numpy, then cupy when a GPU is available (else skipped)."""
    if request.param == "gpu":
        if not _GPU:
            pytest.skip("no CuPy/GPU on this machine")
        return backend.get_xp("gpu")
    return np


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# Every gradient check made through `gradcheck` below is collected here and printed as one
# table at the end of the run, so the test output shows the measured errors, layer by layer.
_GRADCHECKS = []


def gradcheck(name, forward, backward, arrays, tol, **kw):
    """Run minidit.gradcheck.check_gradients, record its table, and assert it passes."""
    from minidit.gradcheck import check_gradients
    res = check_gradients(forward, backward, arrays, tol=tol, **kw)
    _GRADCHECKS.append((name, res))
    print(f"{name}\n{res}")
    res.assert_ok(name)
    return res


def randn(xp, rng, *shape, scale=1.0):
    """A float64 standard-normal array on the backend of `xp`."""
    return xp.asarray(scale * rng.standard_normal(shape))


def pytest_terminal_summary(terminalreporter):
    if not _GRADCHECKS:
        return
    tr = terminalreporter
    tr.section("gradient checks (float64, max relative error per array)")
    for name, res in _GRADCHECKS:
        worst = max(res.rows, key=lambda r: r[3]) if res.rows else ("-", (), 0, 0.0)
        tr.write_line(f"{name:<58} worst {worst[0]:<22} {worst[3]:.1e}  (tol {res.tol:.0e}) "
                      f"{'ok' if res.ok else 'FAIL'}")
