"""Transformer MLP (fc1 -> tanh-GELU -> fc2): forward and float64 gradient check (1e-7)."""
import math

import numpy as np

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.mlp import mlp_forward, mlp_backward


def _arrays(xp, rng, D=6):
    return dict(x=randn(xp, rng, 2, 3, D), fc1_w=randn(xp, rng, D, 4 * D, scale=0.5),
                fc1_b=randn(xp, rng, 4 * D, scale=0.5), fc2_w=randn(xp, rng, 4 * D, D, scale=0.5),
                fc2_b=randn(xp, rng, D, scale=0.5))


def test_mlp_forward(xp, rng):
    a = _arrays(xp, rng)
    out, _ = mlp_forward(**a)
    n = to_numpy(a)
    h = n["x"] @ n["fc1_w"] + n["fc1_b"]
    g = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    np.testing.assert_allclose(to_numpy(out), g @ n["fc2_w"] + n["fc2_b"], rtol=1e-10, atol=1e-12)


def test_mlp_gradcheck(xp, rng):
    gradcheck("mlp (fc1, gelu, fc2)", mlp_forward, mlp_backward, _arrays(xp, rng), tol=1e-7)
