"""Timestep embedder (from GLIDE/ADM; paper section 3.2, docs/paper.md §1.3): sinusoidal features
of the (possibly fractional) timestep, then Linear(256 -> D) -> SiLU -> Linear(D -> D).
"""
import math

from ..backend import get_array_module, on_device_of
from .activations import silu_forward, silu_backward
from .linear import linear_forward, linear_backward


# exercise: 3.2 DiT block design
def timestep_features(t, dim=256, max_period=10000):
    """t (N,) -> (N, dim) float32 features [cos(t f), sin(t f)], f_k = exp(-ln(max_period) k / half).

    Cos comes first and the divisor is `half` (not half - 1). The arithmetic is float32
    whatever the model's dtype, as in the official code: at t ~ 999 float64 would differ by
    about 3e-5.
    """
    xp = get_array_module(t)
    half = dim // 2
    freqs = xp.exp(-math.log(max_period) * xp.arange(half, dtype=xp.float32) / half).astype(xp.float32)
    args = xp.asarray(t).astype(xp.float32)[:, None] * freqs[None, :]  # (N, half)
    feats = xp.concatenate([xp.cos(args), xp.sin(args)], axis=1)
    if dim % 2:  # odd width: one zero column (DiT always uses 256)
        feats = xp.concatenate([feats, xp.zeros_like(feats[:, :1])], axis=1)
    return feats


def timestep_embedder_forward(t, w0, b0, w2, b2, freq_dim=256):
    """t (N,); w0 (freq_dim, D), b0 (D,), w2 (D, D), b2 (D,) -> t_emb (N, D).

    The features are cast to the weights' dtype after being computed in float32; t may be on
    the host or on the weights' device (it is moved, as the labels of label_embed_forward are).
    """
    f = timestep_features(on_device_of(w0, t), freq_dim).astype(w0.dtype)  # (N, 256)
    h, c0 = linear_forward(f, w0, b0)  # (N, D)
    a, cs = silu_forward(h)
    out, c2 = linear_forward(a, w2, b2)  # (N, D)
    return out, (c0, cs, c2)


def timestep_embedder_backward(dout, cache):
    """dout (N, D) -> dw0, db0, dw2, db2 (t itself gets no gradient)."""
    c0, cs, c2 = cache
    # out = a @ w2 + b2
    da, dw2, db2 = linear_backward(dout, c2)
    # a = silu(h)
    dh = silu_backward(da, cs)
    # h = features @ w0 + b0  (features are constant: no gradient flows to t)
    _, dw0, db0 = linear_backward(dh, c0)
    return dw0, db0, dw2, db2
