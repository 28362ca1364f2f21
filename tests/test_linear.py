"""Linear layer: forward against the formula, float64 gradient check (tolerance 1e-7)."""
import numpy as np

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.linear import linear_forward, linear_backward


def test_linear_forward_matches_formula(xp, rng):
    x, w, b = randn(xp, rng, 2, 3, 5), randn(xp, rng, 5, 4), randn(xp, rng, 4)
    out, _ = linear_forward(x, w, b)
    ref = np.einsum("ntd,de->nte", to_numpy(x), to_numpy(w)) + to_numpy(b)
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-12, atol=1e-12)


def test_linear_gradcheck(xp, rng):
    arrays = dict(x=randn(xp, rng, 2, 3, 5), w=randn(xp, rng, 5, 4), b=randn(xp, rng, 4))
    gradcheck("linear", linear_forward, linear_backward, arrays, tol=1e-7)


def test_linear_without_bias(xp, rng):
    arrays = dict(x=randn(xp, rng, 3, 5), w=randn(xp, rng, 5, 2))
    f = lambda x, w: linear_forward(x, w, None)
    b = lambda d, c: linear_backward(d, c)[:2]
    gradcheck("linear (no bias)", f, b, arrays, tol=1e-7)


def test_linear_shape_error(xp, rng):
    import pytest
    with pytest.raises(ValueError, match="features"):
        linear_forward(randn(xp, rng, 2, 3), randn(xp, rng, 4, 2))
