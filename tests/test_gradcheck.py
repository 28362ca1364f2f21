"""The gradient checker itself: it passes a correct backward, catches a broken one, and
refuses float32 (where central differences are too coarse to mean anything)."""
import numpy as np
import pytest

from minidit.gradcheck import check_gradients, numerical_gradient, rel_error
from minidit.layers.linear import linear_forward, linear_backward


def _arrays(rng):
    return dict(x=rng.standard_normal((3, 4)), w=rng.standard_normal((4, 2)), b=rng.standard_normal(2))


def test_correct_backward_passes(rng):
    res = check_gradients(linear_forward, linear_backward, _arrays(rng))
    assert res.ok and res.max_error < 1e-8
    assert "max rel err" in str(res) and len(res.rows) == 3


def test_broken_backward_is_caught(rng):
    def broken(dout, cache):
        dx, dw, db = linear_backward(dout, cache)
        return dx, dw.T.reshape(dw.shape), db  # a transposed weight gradient, a classic bug
    res = check_gradients(linear_forward, broken, _arrays(rng))
    assert not res.ok and res.errors["w"] > 1e-2 and res.errors["x"] < 1e-8
    with pytest.raises(AssertionError, match="'w'"):
        res.assert_ok()


def test_float32_is_refused(rng):
    a = {k: v.astype(np.float32) for k, v in _arrays(rng).items()}
    with pytest.raises(ValueError, match="float64"):
        check_gradients(linear_forward, linear_backward, a)


def test_numerical_gradient_of_a_square_and_sampling(rng):
    x = rng.standard_normal(5)
    g = numerical_gradient(lambda: x * x, x, np.ones(5))
    np.testing.assert_allclose(g, 2 * x, rtol=1e-8)
    part = numerical_gradient(lambda: x * x, x, np.ones(5), indices=[1, 3])
    assert np.isnan(part[0]) and np.isclose(part[3], 2 * x[3])


def test_rel_error():
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.2])) == pytest.approx(0.2 / 2.2)
    with pytest.raises(ValueError, match="shapes"):
        rel_error(np.zeros(2), np.zeros(3))
