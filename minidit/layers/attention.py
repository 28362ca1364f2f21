"""Multi-head self-attention with a fused qkv projection (timm's Attention, docs/paper.md §1.5).

qkv = x @ W_qkv + b splits its 3D outputs as (3, nh, hd): the first D features are q (head
after head), then k, then v. Each head attends over all tokens with softmax(q k^T / sqrt(hd)),
and the heads are concatenated head-major before the output projection. All heads and all
images go through one batched matrix product, with no Python loop.
"""
from typing import NamedTuple

from ..backend import get_array_module
from .activations import softmax_forward, softmax_backward
from .linear import linear_forward, linear_backward


class SdpaCache(NamedTuple):
    """q, k, v (N, nh, T, hd), the attention probabilities (N, nh, Tq, Tk) and the 1/sqrt(hd) scale."""
    q: object
    k: object
    v: object
    probs: object
    scale: float


class AttentionCache(NamedTuple):
    """The caches of the qkv projection, of sdpa (its .probs are the attention maps) and of the
    output projection, and the number of heads."""
    qkv: object
    sdpa: SdpaCache
    proj: object
    num_heads: int


# exercise: 3.2 DiT block design
def sdpa_forward(q, k, v):
    """Scaled dot-product attention. q (N, nh, Tq, hd), k, v (N, nh, Tk, hd) -> (N, nh, Tq, hd),
    cache (an SdpaCache; a plain tuple in the same order works too)."""
    scale = q.shape[-1] ** -0.5
    scores = (q * scale) @ k.swapaxes(-1, -2)  # (N, nh, Tq, Tk)
    p, _ = softmax_forward(scores)
    out = p @ v  # (N, nh, Tq, hd)
    return out, SdpaCache(q, k, v, p, scale)


# exercise: 3.2 DiT block design
def sdpa_backward(dout, cache):
    """dout (N, nh, Tq, hd) -> dq, dk, dv."""
    q, k, v, p, scale = cache
    # out = p @ v
    dv = p.swapaxes(-1, -2) @ dout  # (N, nh, Tk, hd)
    # scores = (q * scale) @ k^T, so dq and dk both carry the scale. The softmax backward is
    # linear in its upstream gradient, so the scale goes in before it, on the small dout
    # (N, nh, Tq, hd) rather than on the big (N, nh, Tq, Tk) score gradients.
    dp = (dout * scale) @ v.swapaxes(-1, -2)  # scale * dL/dp, (N, nh, Tq, Tk)
    # p = softmax(scores)
    ds = softmax_backward(dp, (p, -1))  # scale * dL/dscores
    dq = ds @ k
    dk = ds.swapaxes(-1, -2) @ q
    return dq, dk, dv


def split_heads(x, nh):
    """(N, T, D) -> (N, nh, T, hd), head-major features as in docs/paper.md §1.5."""
    N, T, D = x.shape
    return x.reshape(N, T, nh, D // nh).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(N, nh, T, hd) -> (N, T, nh*hd): heads concatenated head-major."""
    N, nh, T, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(N, T, nh * hd)


def attention_forward(x, qkv_w, qkv_b, proj_w, proj_b, num_heads):
    """x (N, T, D); qkv_w (D, 3D), qkv_b (3D,); proj_w (D, D), proj_b (D,) -> out (N, T, D)."""
    N, T, D = x.shape
    if D % num_heads:
        raise ValueError(f"attention: hidden size {D} is not divisible by num_heads={num_heads}")
    hd = D // num_heads
    qkv, c_qkv = linear_forward(x, qkv_w, qkv_b)  # (N, T, 3D)
    qkv = qkv.reshape(N, T, 3, num_heads, hd).transpose(2, 0, 3, 1, 4)  # (3, N, nh, T, hd)
    o, c_att = sdpa_forward(qkv[0], qkv[1], qkv[2])  # (N, nh, T, hd)
    out, c_proj = linear_forward(merge_heads(o), proj_w, proj_b)  # (N, T, D)
    return out, AttentionCache(c_qkv, c_att, c_proj, num_heads)


# exercise: 3.2 DiT block design
def attention_backward(dout, cache):
    """dout (N, T, D) -> dx, dqkv_w, dqkv_b, dproj_w, dproj_b."""
    c_qkv, c_att, c_proj, nh = cache
    N, T, D = dout.shape
    xp = get_array_module(dout)
    # out = merge_heads(o) @ proj_w + proj_b
    do, dproj_w, dproj_b = linear_backward(dout, c_proj)
    # o = sdpa(q, k, v)
    dq, dk, dv = sdpa_backward(split_heads(do, nh), c_att)
    # (q, k, v) = qkv.reshape(N, T, 3, nh, hd).transpose(2, 0, 3, 1, 4)
    dqkv = xp.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(N, T, 3 * D)
    # qkv = x @ qkv_w + qkv_b
    dx, dqkv_w, dqkv_b = linear_backward(dqkv, c_qkv)
    return dx, dqkv_w, dqkv_b, dproj_w, dproj_b

