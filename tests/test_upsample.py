"""Nearest 2x upsampling: forward equals np.repeat on both axes, gradient check."""
import numpy as np

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.upsample import upsample2x_backward, upsample2x_forward


def test_upsample_forward_repeats_pixels(xp, rng):
    x = randn(xp, rng, 2, 3, 4, 5)
    out, _ = upsample2x_forward(x)
    ref = np.repeat(np.repeat(to_numpy(x), 2, axis=2), 2, axis=3)
    assert out.shape == (2, 3, 8, 10) and np.array_equal(to_numpy(out), ref)


def test_upsample_gradcheck(xp, rng):
    gradcheck("upsample 2x nearest (2x3x4x5)", upsample2x_forward,
              lambda d, c: (upsample2x_backward(d, c),), dict(x=randn(xp, rng, 2, 3, 4, 5)), tol=1e-7)
