"""LayerNorm with and without affine: forward against the formula, gradient checks (1e-7)."""
import numpy as np

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.layernorm import layernorm_forward, layernorm_backward


def test_layernorm_forward_matches_formula(xp, rng):
    x = randn(xp, rng, 2, 3, 6, scale=3.0) + 1.5
    g, b = randn(xp, rng, 6), randn(xp, rng, 6)
    xn = to_numpy(x)
    ref = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-6)
    out, _ = layernorm_forward(x)  # DiT's LayerNorm: eps 1e-6, no affine
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-10, atol=1e-10)
    out, _ = layernorm_forward(x, g, b, eps=1e-5)
    ref = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(to_numpy(out), ref * to_numpy(g) + to_numpy(b), rtol=1e-10, atol=1e-10)


def test_layernorm_no_affine_gradcheck(xp, rng):
    arrays = dict(x=randn(xp, rng, 2, 3, 6, scale=2.0))
    f = lambda x: layernorm_forward(x, eps=1e-6)
    b = lambda d, c: layernorm_backward(d, c)[:1]
    gradcheck("layernorm (no affine, eps 1e-6)", f, b, arrays, tol=1e-7)


def test_layernorm_affine_gradcheck(xp, rng):
    arrays = dict(x=randn(xp, rng, 2, 3, 6), gamma=randn(xp, rng, 6), beta=randn(xp, rng, 6))
    f = lambda x, gamma, beta: layernorm_forward(x, gamma, beta, eps=1e-5)
    gradcheck("layernorm (affine)", f, layernorm_backward, arrays, tol=1e-7)
