"""GELU (tanh), SiLU and softmax: forwards against formulas, gradient checks (1e-7)."""
import math
import warnings

import numpy as np

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.activations import (gelu_forward, gelu_backward, silu_forward, silu_backward,
                                        softmax_forward, softmax_backward)


def test_gelu_tanh_values(xp):
    x = xp.asarray([-3.0, -1.0, 0.0, 0.5, 2.0])
    out, _ = gelu_forward(x)
    ref = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
           for v in [-3.0, -1.0, 0.0, 0.5, 2.0]]
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-12)
    # the tanh approximation is close to, but not exactly, the erf GELU: 0.5 * 0.5 * (1 + erf(0.5/sqrt2))
    assert abs(float(out[3]) - 0.5 * 0.5 * (1 + math.erf(0.5 / math.sqrt(2)))) < 1e-3


def test_gelu_far_from_zero_float32(xp):
    """Computed through exp(-2u), which overflows to inf for x below about -10 in float32: the
    forward and backward must still give GELU's limits (0 on the left, x and 1 on the right),
    finite numbers and no overflow warning."""
    x = xp.asarray([-1e4, -100.0, -30.0, -12.0, 12.0, 30.0, 100.0, 1e4], dtype=xp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, cache = gelu_forward(x)
        dx = gelu_backward(xp.ones_like(x), cache)
    out, dx = to_numpy(out), to_numpy(dx)
    assert out.dtype == np.float32 and dx.dtype == np.float32
    assert np.isfinite(out).all() and np.isfinite(dx).all()
    np.testing.assert_array_equal(out[:4], 0.0)
    np.testing.assert_array_equal(dx[:4], 0.0)
    np.testing.assert_array_equal(out[4:], to_numpy(x)[4:])
    np.testing.assert_array_equal(dx[4:], 1.0)


def test_silu_values(xp):
    x = xp.asarray([-2.0, 0.0, 1.0])
    out, _ = silu_forward(x)
    np.testing.assert_allclose(to_numpy(out), [-2 / (1 + math.exp(2)), 0.0, 1 / (1 + math.exp(-1))], rtol=1e-12)


def test_softmax_values(xp, rng):
    x = randn(xp, rng, 2, 3, 5, scale=4.0)
    out, _ = softmax_forward(x)
    xn = to_numpy(x)
    ref = np.exp(xn) / np.exp(xn).sum(-1, keepdims=True)
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-12)
    big, _ = softmax_forward(xp.asarray([[1000.0, 1000.0]]))  # no overflow thanks to the max shift
    np.testing.assert_allclose(to_numpy(big), [[0.5, 0.5]])


def test_gelu_gradcheck(xp, rng):
    gradcheck("gelu (tanh)", gelu_forward, lambda d, c: (gelu_backward(d, c),),
              dict(x=randn(xp, rng, 3, 7, scale=2.0)), tol=1e-7)


def test_silu_gradcheck(xp, rng):
    gradcheck("silu", silu_forward, lambda d, c: (silu_backward(d, c),),
              dict(x=randn(xp, rng, 3, 7, scale=2.0)), tol=1e-7)


def test_softmax_gradcheck(xp, rng):
    gradcheck("softmax", softmax_forward, lambda d, c: (softmax_backward(d, c),),
              dict(x=randn(xp, rng, 2, 3, 5, scale=2.0)), tol=1e-7)


def test_gelu_in_cache_blocks_equals_one_piece(xp, rng):
    """On a big contiguous NumPy array GELU works block by block (backend.cache_blocks); a
    strided view of the same numbers goes through in one piece. Both must give the formula's
    values and the same bits, forward and backward, remainder block included."""
    from minidit.backend import CACHE_BLOCK
    x = randn(xp, rng, 300, 500, scale=2.0)  # 150,000 elements: 2 blocks and a partial one
    d = randn(xp, rng, 300, 500)
    assert x.size > 2 * CACHE_BLOCK and x.size % CACHE_BLOCK
    xn, dn = to_numpy(x), to_numpy(d)
    k, c = math.sqrt(2 / math.pi), 0.044715
    th = np.tanh(k * (xn + c * xn ** 3))
    out, cache = gelu_forward(x)
    dx = gelu_backward(d, cache)
    np.testing.assert_allclose(to_numpy(out), 0.5 * xn * (1 + th), rtol=1e-10, atol=1e-14)
    ref_dx = dn * (0.5 * (1 + th) + 0.5 * xn * (1 - th ** 2) * k * (1 + 3 * c * xn ** 2))
    np.testing.assert_allclose(to_numpy(dx), ref_dx, rtol=1e-10, atol=1e-14)
    xs, ds = xp.asfortranarray(x), xp.asfortranarray(d)  # same values, not C-contiguous
    np.testing.assert_array_equal(to_numpy(gelu_forward(xs)[0]), to_numpy(out))
    np.testing.assert_array_equal(to_numpy(gelu_backward(ds, xs)), to_numpy(dx))
