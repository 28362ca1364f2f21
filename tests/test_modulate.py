"""adaLN modulate x * (1 + scale) + shift and the gated residual: values and gradient checks."""
import numpy as np

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.modulate import (modulate_forward, modulate_backward, gated_residual_forward,
                                     gated_residual_backward)


def test_modulate_values(xp, rng):
    x, shift, scale = randn(xp, rng, 2, 3, 4), randn(xp, rng, 2, 4), randn(xp, rng, 2, 4)
    out, _ = modulate_forward(x, shift, scale)
    n = to_numpy(x)
    ref = n * (1 + to_numpy(scale)[:, None]) + to_numpy(shift)[:, None]
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-12)
    ident, _ = modulate_forward(x, 0 * shift, 0 * scale)  # zero shift and scale: identity
    np.testing.assert_array_equal(to_numpy(ident), n)


def test_modulate_gradcheck(xp, rng):
    arrays = dict(x=randn(xp, rng, 2, 3, 4), shift=randn(xp, rng, 2, 4), scale=randn(xp, rng, 2, 4))
    gradcheck("adaLN modulate", modulate_forward, modulate_backward, arrays, tol=1e-7)


def test_gated_residual_gradcheck(xp, rng):
    arrays = dict(x=randn(xp, rng, 2, 3, 4), branch=randn(xp, rng, 2, 3, 4), gate=randn(xp, rng, 2, 4))
    gradcheck("gated residual", gated_residual_forward, gated_residual_backward, arrays, tol=1e-7)
    out, _ = gated_residual_forward(arrays["x"], arrays["branch"], 0 * arrays["gate"])
    np.testing.assert_array_equal(to_numpy(out), to_numpy(arrays["x"]))  # zero gate: identity
