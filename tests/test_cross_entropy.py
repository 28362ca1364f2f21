"""Softmax cross-entropy (the evaluation classifier's loss): float64 gradient check of the
logits with a random upstream gradient, agreement with a direct formula, and stability."""
import numpy as np

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.cross_entropy import cross_entropy_backward, cross_entropy_forward


def test_cross_entropy_gradcheck(xp, rng):
    arrays = dict(logits=randn(xp, rng, 6, 5, scale=2.0), y=xp.asarray(rng.integers(0, 5, 6)))

    def b(dout, cache):
        return dict(logits=cross_entropy_backward(dout, cache), y=None)

    res = gradcheck("cross entropy", cross_entropy_forward, b, arrays, tol=1e-7)
    assert [r[0] for r in res.rows] == ["logits"]


def test_cross_entropy_matches_direct_formula(xp, rng):
    logits, y = rng.standard_normal((7, 4)), rng.integers(0, 4, 7)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    want = -np.log(p[np.arange(7), y]).mean()
    loss, _ = cross_entropy_forward(xp.asarray(logits), xp.asarray(y))
    np.testing.assert_allclose(float(loss), want, rtol=1e-12)


def test_cross_entropy_is_stable_for_large_logits(xp):
    logits = xp.asarray([[1000.0, 0.0, -1000.0], [0.0, 2000.0, 0.0]])
    loss, cache = cross_entropy_forward(logits, xp.asarray([0, 0]))
    d = to_numpy(cross_entropy_backward(1.0, cache))
    # sample 0 is right with certainty (loss 0); sample 1 is wrong by a margin of 2000
    np.testing.assert_allclose(float(loss), 1000.0, rtol=1e-12)
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d, [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-12)
