"""Timestep features (cos first, divisor half, float32; docs/paper.md §1.3) against hand-derived
values, and a float64 gradient check of the timestep MLP (tolerance 1e-7)."""
import math

import numpy as np

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.timestep_embed import (timestep_features, timestep_embedder_forward,
                                           timestep_embedder_backward)


def test_features_hand_derived(xp):
    # dim 4: half = 2, f = [exp(0), exp(-ln(10000) / 2)] = [1, 0.01]
    f = to_numpy(timestep_features(xp.asarray([0.0, 1.0, 2.5]), dim=4))
    assert f.dtype == np.float32
    np.testing.assert_allclose(f[0], [1, 1, 0, 0], atol=1e-7)
    np.testing.assert_allclose(f[1], [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)], atol=1e-6)
    np.testing.assert_allclose(f[2], [math.cos(2.5), math.cos(0.025), math.sin(2.5), math.sin(0.025)], atol=1e-6)


def test_features_dit_width_and_float32(xp):
    t = xp.asarray([999, 3])
    f = to_numpy(timestep_features(t))  # 256 features
    assert f.shape == (2, 256) and f.dtype == np.float32
    k = 127  # last frequency: exp(-ln(1e4) * 127 / 128), divisor half = 128
    np.testing.assert_allclose(f[0, k], math.cos(999 * math.exp(-math.log(1e4) * k / 128)), atol=1e-4)
    np.testing.assert_allclose(f[0, 128 + 5], math.sin(999 * math.exp(-math.log(1e4) * 5 / 128)), atol=1e-4)


def test_features_odd_dim_pads_zero(xp):
    f = to_numpy(timestep_features(xp.asarray([7.0]), dim=5))
    assert f.shape == (1, 5) and f[0, 4] == 0


def test_timestep_mlp_gradcheck(xp, rng):
    D, F = 6, 8
    t = xp.asarray([0.0, 17.0, 999.0])
    arrays = dict(w0=randn(xp, rng, F, D), b0=randn(xp, rng, D), w2=randn(xp, rng, D, D), b2=randn(xp, rng, D))
    f = lambda w0, b0, w2, b2: timestep_embedder_forward(t, w0, b0, w2, b2, freq_dim=F)
    gradcheck("timestep MLP (linear, silu, linear)", f, timestep_embedder_backward, arrays, tol=1e-7)
