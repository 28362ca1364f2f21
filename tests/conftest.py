"""Shared fixtures: the backend is one more test parameter (cpu always, gpu too). Without a real
CuPy, "gpu" runs on the strict CuPy stand-in of tests/standin (issue 15), here and in every
subprocess the tests start (notebooks, commands), so CI proves the GPU code paths."""
import importlib.util
import os
import sys
from pathlib import Path

# pytest-xdist runs the suite on two processes (pyproject's addopts: CI's two cores). Each gets one
# BLAS thread, and so does every subprocess a test starts (notebook kernels, commands): two workers
# with two OpenBLAS threads each would fight over two cores, and small matrix products (the VAE's
# convolutions) then run 10 to 20 times slower than on one thread.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):  # in case NumPy was loaded before this file (by a plugin)
    from threadpoolctl import threadpool_limits
    _ONE_BLAS_THREAD = threadpool_limits(1, user_api="blas")

os.environ.setdefault("MPLBACKEND", "Agg")
STANDIN_DIR = str(Path(__file__).resolve().parent / "standin")
STANDIN = importlib.util.find_spec("cupy") is None
if STANDIN:
    sys.path.insert(0, STANDIN_DIR)
    os.environ["PYTHONPATH"] = STANDIN_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")

from minidit import backend  # noqa: E402
from minidit.model import DiTConfig, param_shapes  # noqa: E402

_GPU = backend.gpu_available()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """pytest-xdist's --dist loadgroup sends the tests of one xdist_group to one worker by adding
    "@group" to their node ids in each worker. pytest 9.2 keeps the id in `item._id`, so xdist 3.8's
    own hook (which sets `item._nodeid`) no longer takes effect and the groups were spread over
    both workers (module fixtures built twice, two mpiruns at once): do it here, once."""
    if not getattr(config.option, "loadgroup", False) or not items or not hasattr(items[0], "_id"):
        return
    from _pytest.nodeid import coerce_node_id
    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(groups)}")


def pytest_report_header(config):
    return ("gpu tests run on: the strict CuPy stand-in (tests/standin), no GPU needed" if STANDIN
            else "gpu tests run on: CuPy " + __import__("cupy").__version__ + (" with a GPU" if _GPU else ", no GPU: skipped"))


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def xp(request):
    """The array module to test with: numpy, then cupy (real, or the stand-in without one)."""
    if request.param == "gpu":
        if not _GPU:
            pytest.skip("no CuPy/GPU on this machine")
        return backend.get_xp("gpu")
    return np


@pytest.fixture
def standin():
    """The CuPy stand-in module with its counters reset (tests that count syncs); skips on a
    real GPU, whose syncs the stand-in cannot see."""
    if not STANDIN:
        pytest.skip("real CuPy present: the counts are the stand-in's")
    import cupy
    cupy.reset_counts()
    return cupy


@pytest.fixture(autouse=True)
def _cpu_is_the_default_device(monkeypatch):
    """Every test starts with the CPU as the default device, whatever MINIDIT_DEVICE says, so the
    suite runs unchanged with MINIDIT_DEVICE=gpu; tests reach the GPU through the xp parameter or
    an explicit device."""
    monkeypatch.setenv(backend.ENV_VAR, "cpu")
    backend.set_device("cpu")
    yield
    backend.set_device("cpu")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# What the run measured, printed as sections at its end: every gradient check made through
# `gradcheck` below (one table), the bad-input cases of tests/test_bad_input.py (one count line),
# and the lines tests report with `summary` (leak scan, planted bugs, the site, the lock race...).
# A test appends here; its report carries the new entries (user_properties), and the end-of-run
# summary reads them from the reports, so the tables are whole also when pytest-xdist runs the
# tests in several processes.
_GRADCHECKS = []
BAD_INPUTS = []
_LINES = []
_COLLECTED = {"grad": [], "bad": [], "lines": []}


def gradcheck(name, forward, backward, arrays, tol, **kw):
    """Run minidit.gradcheck.check_gradients, record its worst error, and assert it passes."""
    from minidit.gradcheck import check_gradients
    res = check_gradients(forward, backward, arrays, tol=tol, **kw)
    worst = max(res.rows, key=lambda r: r[3]) if res.rows else ("-", (), 0, 0.0)
    _GRADCHECKS.append(dict(name=name, worst=str(worst[0]), err=float(worst[3]), tol=float(res.tol),
                            ok=bool(res.ok)))
    print(f"{name}\n{res}")
    res.assert_ok(name)
    return res


def summary(section, text):
    """Print `text` at the end of the run under `section` (and now, for -s)."""
    print(text)
    _LINES.append((section, text))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "teardown":  # everything the test (and its fixtures) recorded
        new = {"grad": list(_GRADCHECKS), "bad": list(BAD_INPUTS), "lines": list(_LINES)}
        for recorded in (_GRADCHECKS, BAD_INPUTS, _LINES):
            recorded.clear()
        if any(new.values()):
            report.user_properties.append(("minidit", new))


def pytest_runtest_logreport(report):
    for key, value in getattr(report, "user_properties", ()):
        if key == "minidit":
            for k in _COLLECTED:
                _COLLECTED[k] += [tuple(v) if k == "lines" else v for v in value[k]]


def randn(xp, rng, *shape, scale=1.0):
    """A float64 standard-normal array on the backend of `xp`."""
    return xp.asarray(scale * rng.standard_normal(shape))


def tiny_dit(design="adaLN-Zero", **kw):
    """A DiTConfig small enough for float64 gradient checks (8x8 input, 2 blocks of width 16)."""
    base = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=16, depth=2, num_heads=2,
                num_classes=5, block=design)
    base.update(kw)
    return DiTConfig(**base)


def dit_inputs(xp, cfg, n=2, seed=0):
    """x (n, C, I, I), t and y (the null class among them) for a DiT forward."""
    rng = np.random.default_rng(seed)
    x = xp.asarray(rng.standard_normal((n, cfg.in_channels, cfg.input_size, cfg.input_size)))
    t = xp.asarray(np.array([3, 871, 0, 999][:n]))
    y = xp.asarray(np.array([1, cfg.num_classes, 4, 0][:n]))  # includes the null class
    return x, t, y


def randomised_params(xp, cfg, seed=1, dtype=np.float64):
    """Every parameter random (zero-initialised ones too), LayerNorm gains near 1."""
    rng = np.random.default_rng(seed)
    P = {}
    for k, s in param_shapes(cfg).items():
        v = 0.3 * rng.standard_normal(s)
        if ".norm" in k and k.endswith(".w"):
            v += 1.0
        P[k] = xp.asarray(v.astype(dtype))
    return P


def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput"):
        return
    tr = terminalreporter
    bad, grads = _COLLECTED["bad"], _COLLECTED["grad"]
    for section in dict.fromkeys(sec for sec, _ in _COLLECTED["lines"]):
        tr.section(section)
        for sec, text in _COLLECTED["lines"]:
            if sec == section:
                tr.write_line(text)
    if bad:
        clear = sum(r["code"] == 2 and r["one_line"] and not r["traceback"] for r in bad)
        tr.section("bad-input matrix")
        tr.write_line(f"{len(bad)} bad inputs tried over {len({r['command'] for r in bad})} "
                      f"commands: {clear} one-line errors with exit 2, "
                      f"{sum(r['traceback'] for r in bad)} tracebacks, "
                      f"{sum(r['changed'] > 0 for r in bad)} left a file behind or changed one")
    if not grads:
        return
    tr.section("gradient checks (float64, max relative error per array)")
    for g in grads:
        tr.write_line(f"{g['name']:<58} worst {g['worst']:<22} {g['err']:.1e}  (tol {g['tol']:.0e}) "
                      f"{'ok' if g['ok'] else 'FAIL'}")


def same_arrays(a, b):
    """Assert that two {name: array} dicts hold the same names and the same bits."""
    assert a.keys() == b.keys()
    bad = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not bad, f"differ: {bad[:5]}"


def run_log(run):
    """A run's log.jsonl lines without their timings (what two equal runs share)."""
    return [line.split('"steps_per_sec"')[0] for line in (Path(run) / "log.jsonl").read_text().splitlines()]
