"""Cross-attention: forward against a per-head loop, float64 gradient check of every input and
parameter, including the conditioning sequence (tolerance 1e-7)."""
import numpy as np

from conftest import gradcheck, randn
from minidit.backend import to_numpy
from minidit.layers.cross_attention import cross_attention_forward, cross_attention_backward

N, T, S, D, NH = 2, 5, 2, 8, 2
NAMES = ["q_w", "q_b", "k_w", "k_b", "v_w", "v_b", "proj_w", "proj_b"]


def _params(xp, rng):
    return {n: randn(xp, rng, *((D, D) if n.endswith("_w") else (D,)), scale=0.5) for n in NAMES}


def test_cross_attention_forward_matches_reference(xp, rng):
    x, ctx, prm = randn(xp, rng, N, T, D), randn(xp, rng, N, S, D), _params(xp, rng)
    out, _ = cross_attention_forward(x, ctx, **prm, num_heads=NH)
    x, ctx, p = to_numpy(x), to_numpy(ctx), to_numpy(prm)
    hd = D // NH
    ref = np.zeros_like(x)
    for i in range(N):
        q, k, v = x[i] @ p["q_w"] + p["q_b"], ctx[i] @ p["k_w"] + p["k_b"], ctx[i] @ p["v_w"] + p["v_b"]
        heads = []
        for h in range(NH):
            sl = slice(h * hd, (h + 1) * hd)
            s = q[:, sl] @ k[:, sl].T / np.sqrt(hd)
            a = np.exp(s) / np.exp(s).sum(1, keepdims=True)
            heads.append(a @ v[:, sl])
        ref[i] = np.concatenate(heads, 1) @ p["proj_w"] + p["proj_b"]
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-10, atol=1e-12)


def test_cross_attention_gradcheck(xp, rng):
    arrays = dict(x=randn(xp, rng, N, T, D), ctx=randn(xp, rng, N, S, D), **_params(xp, rng))
    f = lambda **a: cross_attention_forward(**a, num_heads=NH)
    # The key bias adds the same q.k_b to every score of a query, and softmax ignores such a
    # shift, so its true gradient is exactly zero: a relative error would compare noise with
    # noise. It is checked on its own below, in absolute terms.
    names = [n for n in arrays if n != "k_b"]
    gradcheck("cross-attention", f, cross_attention_backward, arrays, tol=1e-7, wrt=names)
    out, cache = f(**arrays)
    dk_b = to_numpy(cross_attention_backward(xp.asarray(rng.standard_normal(out.shape)), cache)[5])
    assert np.abs(dk_b).max() < 1e-12
