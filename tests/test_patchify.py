"""Patchify equals the official conv (kernel = stride = p), unpatchify follows docs/paper.md §1.6,
both on a NON-square image so a row/column swap cannot hide; gradient checks (1e-7)."""
import numpy as np
import pytest

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.patchify import (patchify, unpatchify_chw, patch_embed_forward,
                                     patch_embed_backward, unpatchify_hwc_forward, unpatchify_hwc_backward)

N, C, H, W, P, D = 2, 3, 4, 6, 2, 5  # Gh = 2, Gw = 3


def conv_reference(x, weight, bias, p):
    """Conv2d with a (D, C, p, p) kernel, stride p, then flatten(2).transpose(1, 2) as timm does."""
    n, c, h, w = x.shape
    out = np.zeros((n, weight.shape[0], h // p, w // p))
    for i in range(h // p):
        for j in range(w // p):
            patch = x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (N, C, p, p)
            out[:, :, i, j] = np.einsum("ncab,dcab->nd", patch, weight) + bias
    return out.reshape(n, weight.shape[0], -1).transpose(0, 2, 1)  # tokens row-major over the grid


def test_patch_embed_equals_conv(xp, rng):
    x = randn(xp, rng, N, C, H, W)
    conv_w = rng.standard_normal((D, C, P, P))  # the official Conv2d weight layout
    b = rng.standard_normal(D)
    w = xp.asarray(conv_w.reshape(D, C * P * P).T)  # our Linear weight: (C*p*p, D)
    out, _ = patch_embed_forward(x, w, xp.asarray(b), P)
    np.testing.assert_allclose(to_numpy(out), conv_reference(to_numpy(x), conv_w, b, P), rtol=1e-10)


def test_patchify_order_and_inverse(xp, rng):
    x = randn(xp, rng, N, C, H, W)
    pt = to_numpy(patchify(x, P))
    assert pt.shape == (N, (H // P) * (W // P), C * P * P)
    xn = to_numpy(x)
    # token 4 = grid row 1, grid col 1; feature (c, a, b) = c*p*p + a*p + b
    assert pt[1, 4, 2 * 4 + 1 * 2 + 0] == xn[1, 2, 1 * P + 1, 1 * P + 0]
    np.testing.assert_array_equal(to_numpy(unpatchify_chw(patchify(x, P), P, C, H, W)), xn)


def test_unpatchify_formula(xp, rng):
    C_out = 2
    tok = randn(xp, rng, N, (H // P) * (W // P), P * P * C_out)
    img, _ = unpatchify_hwc_forward(tok, P, C_out, H, W)
    img, tn = to_numpy(img), to_numpy(tok)
    Gw = W // P
    for c in range(C_out):
        for i in range(H // P):
            for j in range(Gw):
                for a in range(P):
                    for b in range(P):
                        assert img[1, c, i * P + a, j * P + b] == tn[1, i * Gw + j, (a * P + b) * C_out + c]


def test_patch_embed_gradcheck(xp, rng):
    arrays = dict(x=randn(xp, rng, N, C, H, W), w=randn(xp, rng, C * P * P, D), b=randn(xp, rng, D))
    f = lambda x, w, b: patch_embed_forward(x, w, b, P)
    gradcheck("patch embed (patchify + linear)", f, patch_embed_backward, arrays, tol=1e-7)


def test_unpatchify_gradcheck(xp, rng):
    arrays = dict(tokens=randn(xp, rng, N, 6, P * P * 2))
    f = lambda tokens: unpatchify_hwc_forward(tokens, P, 2, H, W)
    gradcheck("unpatchify", f, lambda d, c: (unpatchify_hwc_backward(d, c),), arrays, tol=1e-7)


def test_patchify_rejects_bad_size(xp, rng):
    with pytest.raises(ValueError, match="patch size"):
        patchify(randn(xp, rng, 1, 3, 5, 4), 2)
