"""GroupNorm: forward against the formula (per image and group of channels), gradient check."""
import numpy as np
import pytest

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.groupnorm import groupnorm_backward, groupnorm_forward


def test_groupnorm_forward_matches_formula(xp, rng):
    x = randn(xp, rng, 2, 6, 3, 5, scale=3.0) + 1.5
    g, b = randn(xp, rng, 6), randn(xp, rng, 6)
    out, _ = groupnorm_forward(x, g, b, num_groups=3)  # eps 1e-6, as the SD VAE
    xn = to_numpy(x)
    ref = np.empty_like(xn)
    for n in range(2):
        for grp in range(3):
            v = xn[n, 2 * grp:2 * grp + 2]  # the group's 2 channels, all positions
            ref[n, 2 * grp:2 * grp + 2] = (v - v.mean()) / np.sqrt(v.var() + 1e-6)
    ref = ref * to_numpy(g)[:, None, None] + to_numpy(b)[:, None, None]
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_groupnorm_gradcheck(xp, rng, groups):
    arrays = dict(x=randn(xp, rng, 2, 4, 3, 5, scale=2.0), gamma=randn(xp, rng, 4), beta=randn(xp, rng, 4))
    f = lambda x, gamma, beta: groupnorm_forward(x, gamma, beta, groups)
    gradcheck(f"groupnorm ({groups} groups, 2x4x3x5)", f, groupnorm_backward, arrays, tol=1e-7)


def test_groupnorm_rejects_uneven_groups(xp, rng):
    with pytest.raises(ValueError, match="groups"):
        groupnorm_forward(randn(xp, rng, 1, 6, 2, 2), randn(xp, rng, 6), randn(xp, rng, 6), 4)
