"""Self-attention: the head split of docs/paper.md §1.5 against a per-head reference loop, and float64
gradient checks of the attention core and of the whole layer (tolerance 1e-7)."""
import numpy as np
import pytest

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.attention import (attention_forward, attention_backward, sdpa_forward,
                                      sdpa_backward)

N, T, D, NH = 2, 5, 12, 3  # batch > 1, several heads, T != D != hd so a transpose cannot hide


def _params(xp, rng):
    return dict(qkv_w=randn(xp, rng, D, 3 * D, scale=0.4), qkv_b=randn(xp, rng, 3 * D, scale=0.4),
                proj_w=randn(xp, rng, D, D, scale=0.4), proj_b=randn(xp, rng, D, scale=0.4))


def reference_attention(x, qkv_w, qkv_b, proj_w, proj_b, nh):
    """Loop over images and heads, reading q, k, v as (3, nh, hd) along the qkv features."""
    n, t, d = x.shape
    hd = d // nh
    qkv = x @ qkv_w + qkv_b
    out = np.zeros_like(x)
    for i in range(n):
        heads = []
        for h in range(nh):
            q = qkv[i, :, 0 * d + h * hd: 0 * d + (h + 1) * hd]
            k = qkv[i, :, 1 * d + h * hd: 1 * d + (h + 1) * hd]
            v = qkv[i, :, 2 * d + h * hd: 2 * d + (h + 1) * hd]
            s = q @ k.T / np.sqrt(hd)
            p = np.exp(s - s.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            heads.append(p @ v)
        out[i] = np.concatenate(heads, axis=1) @ proj_w + proj_b
    return out


def test_attention_forward_matches_reference(xp, rng):
    x = randn(xp, rng, N, T, D)
    prm = _params(xp, rng)
    out, _ = attention_forward(x, **prm, num_heads=NH)
    ref = reference_attention(to_numpy(x), *(to_numpy(prm[k]) for k in prm), NH)
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-10, atol=1e-12)


def test_sdpa_gradcheck(xp, rng):
    arrays = dict(q=randn(xp, rng, N, NH, T, 4), k=randn(xp, rng, N, NH, 3, 4), v=randn(xp, rng, N, NH, 3, 4))
    gradcheck("attention core (sdpa, Tq != Tk)", sdpa_forward, sdpa_backward, arrays, tol=1e-7)


def test_attention_gradcheck(xp, rng):
    arrays = dict(x=randn(xp, rng, N, T, D), **_params(xp, rng))
    f = lambda x, qkv_w, qkv_b, proj_w, proj_b: attention_forward(x, qkv_w, qkv_b, proj_w, proj_b, NH)
    gradcheck("self-attention (fused qkv)", f, attention_backward, arrays, tol=1e-7)


def test_attention_rejects_bad_heads(xp, rng):
    with pytest.raises(ValueError, match="num_heads"):
        attention_forward(randn(xp, rng, N, T, D), **_params(xp, rng), num_heads=5)
