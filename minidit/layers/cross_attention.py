"""Multi-head cross-attention, the conditioning layer of the cross-attention DiT block
(paper section 3.2, docs/paper.md §1.10): queries from the image tokens, keys and values from a
short conditioning sequence (the timestep and label embeddings, length 2).

Unlike self-attention, q, k and v have separate D x D projections, because they read
different sequences.
"""
from typing import NamedTuple

from .attention import SdpaCache, sdpa_forward, sdpa_backward, split_heads, merge_heads
from .linear import linear_forward, linear_backward


class CrossAttentionCache(NamedTuple):
    """The caches of the q, k, v projections, of sdpa (its .probs (N, nh, T, S) say which context
    token each image token reads) and of the output projection, and the number of heads."""
    q: object
    k: object
    v: object
    sdpa: SdpaCache
    proj: object
    num_heads: int


def cross_attention_forward(x, ctx, q_w, q_b, k_w, k_b, v_w, v_b, proj_w, proj_b, num_heads):
    """x (N, T, D) queries, ctx (N, S, D) keys/values; every w (D, D), b (D,) -> out (N, T, D)."""
    if x.shape[-1] % num_heads:
        raise ValueError(f"cross-attention: hidden size {x.shape[-1]} is not divisible by "
                         f"num_heads={num_heads}")
    q, c_q = linear_forward(x, q_w, q_b)  # (N, T, D)
    k, c_k = linear_forward(ctx, k_w, k_b)  # (N, S, D)
    v, c_v = linear_forward(ctx, v_w, v_b)  # (N, S, D)
    o, c_att = sdpa_forward(split_heads(q, num_heads), split_heads(k, num_heads),
                            split_heads(v, num_heads))  # (N, nh, T, hd)
    out, c_proj = linear_forward(merge_heads(o), proj_w, proj_b)  # (N, T, D)
    return out, CrossAttentionCache(c_q, c_k, c_v, c_att, c_proj, num_heads)


# exercise: 3.2 DiT block design
def cross_attention_backward(dout, cache):
    """dout (N, T, D) -> dx, dctx, dq_w, dq_b, dk_w, dk_b, dv_w, dv_b, dproj_w, dproj_b."""
    c_q, c_k, c_v, c_att, c_proj, nh = cache
    # out = merge_heads(o) @ proj_w + proj_b
    do, dproj_w, dproj_b = linear_backward(dout, c_proj)
    # o = sdpa(split(q), split(k), split(v))
    dq, dk, dv = sdpa_backward(split_heads(do, nh), c_att)
    # q = x @ q_w + q_b ; k = ctx @ k_w + k_b ; v = ctx @ v_w + v_b
    dx, dq_w, dq_b = linear_backward(merge_heads(dq), c_q)
    dctx_k, dk_w, dk_b = linear_backward(merge_heads(dk), c_k)
    dctx_v, dv_w, dv_b = linear_backward(merge_heads(dv), c_v)
    # ctx feeds both k and v: its gradient is the sum of the two paths
    dctx = dctx_k + dctx_v
    return dx, dctx, dq_w, dq_b, dk_w, dk_b, dv_w, dv_b, dproj_w, dproj_b
