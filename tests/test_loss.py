"""MSE loss: values and float64 gradient checks, mean and per-sample (tolerance 1e-7)."""
import numpy as np

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.loss import mse_forward, mse_backward


def test_mse_values(xp, rng):
    a, b = randn(xp, rng, 3, 2, 4), randn(xp, rng, 3, 2, 4)
    out, _ = mse_forward(a, b)
    np.testing.assert_allclose(float(out), ((to_numpy(a) - to_numpy(b)) ** 2).mean(), rtol=1e-12)
    per, _ = mse_forward(a, b, per_sample=True)
    np.testing.assert_allclose(to_numpy(per), ((to_numpy(a) - to_numpy(b)) ** 2).mean(axis=(1, 2)), rtol=1e-12)


def test_mse_gradcheck(xp, rng):
    target = randn(xp, rng, 3, 2, 4)
    f = lambda pred: mse_forward(pred, target)
    gradcheck("mse (mean)", f, lambda d, c: (mse_backward(d, c),), dict(pred=randn(xp, rng, 3, 2, 4)),
              tol=1e-7, dout=xp.asarray(0.7))
    f = lambda pred: mse_forward(pred, target, per_sample=True)
    gradcheck("mse (per sample)", f, lambda d, c: (mse_backward(d, c),), dict(pred=randn(xp, rng, 3, 2, 4)), tol=1e-7)
